//! Checkpoints (filled in below).
