//! Checkpoint conformance (issue 6).
use crate::Harness;
/// Save after every call, load, continue: bitwise identical.
pub fn resume_every_call<H: Harness>(_h: &H) {}
/// Corrupt checkpoints are refused.
pub fn refuse_bad<H: Harness>(_h: &H) {}
