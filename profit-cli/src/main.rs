//! `profit`: run the paper's toy experiment, the digits study, or the benchmarks.

use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(name = "profit", version, about = "PROFIT fine-tuning optimizer: experiments and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time a PROFIT cycle and a plain Adam step on every CPU backend against copy bandwidth.
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
