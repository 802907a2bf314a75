//! PROFIT for burn (work in progress).
