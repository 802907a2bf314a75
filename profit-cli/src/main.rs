//! `profit`: run the paper's toy experiment, the digits study, or the benchmarks.

use clap::{Parser, Subcommand};

mod arms;
mod bench;
mod common;
mod digits;
mod plot;
mod toy;

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
    /// The paper's toy experiment (Section 4.1): pre-train, then fine-tune full / head / PROFIT.
    Toy(toy::Args),
    /// Fine-tuning on real data (UCI digits): pre-train, fine-tune on a shifted domain with SGD, Adam, PROFIT.
    Digits(digits::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Toy(args) => toy::run(args),
        Command::Digits(args) => digits::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
