//! The `shadowgpu` command: `scan` decodes and audits a command buffer.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mediated vGPUs for Intel Gen8/Gen9 GPUs.
#[derive(Parser)]
#[command(name = "shadowgpu", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode and audit a ring (and the batch buffers it reaches) the way the vGPU scanner does.
    Scan(cli::scan::ScanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Scan(args) => cli::scan::run(&args),
    }
}
