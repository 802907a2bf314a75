//! `profit bench` (issue 5; being written).

/// Bench options.
#[derive(clap::Args)]
pub struct Args {}

/// Run the benchmark.
pub fn run(_args: Args) -> Result<(), String> {
    Err("profit bench is not implemented yet".into())
}
