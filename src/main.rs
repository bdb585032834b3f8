//! The `shadowgpu` command: `demo` (the main job) shares a software GPU between four vGPUs;
//! `scan` decodes and audits a command buffer; `serve` (feature
//! `vfio-user`) serves vGPUs to external VMMs.

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
    /// Four vGPUs share one software GPU for a few seconds: per-vGPU table, SVG timeline, JSON.
    Demo(cli::demo::DemoArgs),
    /// Decode and audit a ring (and the batch buffers it reaches) the way the vGPU scanner does.
    Scan(cli::scan::ScanArgs),
    /// Serve vGPUs of a software GPU to VMMs over vfio-user (cloud-hypervisor, QEMU >= 10.1).
    #[cfg(feature = "vfio-user")]
    Serve(cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => cli::demo::run_demo(&args),
        Command::Scan(args) => cli::scan::run(&args),
        #[cfg(feature = "vfio-user")]
        Command::Serve(args) => cli::serve::run(&args),
    }
}
