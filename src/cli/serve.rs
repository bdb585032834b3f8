//! `shadowgpu serve`: serve vGPUs of one GPU to external VMMs over vfio-user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use shadowgpu::hw::Platform;
use shadowgpu::mdev::vfio_user::{serve, Served};
use shadowgpu::mdev::{GpuManager, VgpuType};
use shadowgpu::mm::GmLayout;
use shadowgpu::sched::{PolicyConfig, SchedConfig};

/// Options of `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Socket path of a served vGPU (repeat for several vGPUs on the same GPU).
    #[arg(long, required = true)]
    socket: Vec<PathBuf>,
    /// vGPU type: one for every socket, or one per socket (`shadowgpu serve --list-types` shows them).
    #[arg(long = "type", default_value = "GVTg_V5_8")]
    ty: Vec<String>,
    /// Platform of the software GPU (bdw, skl, kbl, cfl, cml).
    #[arg(long, default_value = "cfl")]
    platform: Platform,
    /// A custom type NAME:APERTURE_MIB:HIDDEN_MIB:FENCES:WEIGHT (repeatable).
    #[arg(long = "custom-type")]
    custom: Vec<String>,
    /// Serve one client per socket, then exit (print the registers guests touched that the model
    /// does not know).
    #[arg(long)]
    once: bool,
    /// Print the vGPU types and how many of each fit, then exit.
    #[arg(long)]
    list_types: bool,
    /// Time slice, microseconds of engine time: how long a vGPU keeps an engine while another
    /// waits before its work is preempted.
    #[arg(long, default_value_t = 1000)]
    slice_us: u64,
    /// Hang timeout, milliseconds of engine time a workload may run in one go (without being
    /// preempted) before it is stopped as hung.
    #[arg(long, default_value_t = 50)]
    hang_timeout_ms: u64,
    /// Never preempt: a workload runs until it ends or hangs (as under GVT-g).
    #[arg(long)]
    no_preemption: bool,
}

fn custom_type(s: &str) -> Result<VgpuType, String> {
    let p: Vec<&str> = s.split(':').collect();
    let [name, ap, hid, fences, weight] = p.as_slice() else {
        return Err(format!("custom type `{s}`: expected NAME:APERTURE_MIB:HIDDEN_MIB:FENCES:WEIGHT"));
    };
    let n = |v: &str| v.parse::<u64>().map_err(|e| format!("custom type `{s}`: {v}: {e}"));
    let w = u8::try_from(n(weight)?).map_err(|_| format!("custom type `{s}`: weight"))?;
    let f = u32::try_from(n(fences)?).map_err(|_| format!("custom type `{s}`: fences"))?;
    VgpuType::custom(name, n(ap)? << 20, n(hid)? << 20, f, w).map_err(|e| e.to_string())
}

/// Runs `serve`.
pub fn run(args: &ServeArgs) -> ExitCode {
    match serve_all(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowgpu serve: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve_all(args: &ServeArgs) -> Result<(), String> {
    if args.slice_us == 0 || args.hang_timeout_ms == 0 {
        return Err("--slice-us and --hang-timeout-ms must be above 0".into());
    }
    let policy = PolicyConfig { slice_ns: args.slice_us.saturating_mul(1000), ..PolicyConfig::default() };
    let sched = SchedConfig {
        policy,
        hang_timeout_ns: Some(args.hang_timeout_ms.saturating_mul(1_000_000)),
        preemption: !args.no_preemption,
    };
    let gpu = GpuManager::software_with(args.platform, GmLayout::DESKTOP, sched).map_err(|e| e.to_string())?;
    for c in &args.custom {
        gpu.add_type(custom_type(c)?).map_err(|e| e.to_string())?;
    }
    if args.list_types {
        for t in gpu.types() {
            println!("{} (available: {})", t.ty, t.available);
        }
        return Ok(());
    }
    if args.ty.len() != 1 && args.ty.len() != args.socket.len() {
        return Err(format!(
            "{} types for {} sockets: give one type, or one per socket",
            args.ty.len(),
            args.socket.len()
        ));
    }
    let mut served: Vec<Served> = Vec::new();
    for (i, path) in args.socket.iter().enumerate() {
        let ty = args.ty.get(i).or(args.ty.first()).map(String::as_str).unwrap_or("GVTg_V5_8");
        let s = serve(&gpu, path, ty, args.once).map_err(|e| e.to_string())?;
        eprintln!("shadowgpu serve: vGPU of type {ty} on {} ({})", path.display(), args.platform);
        served.push(s);
    }
    for s in served {
        let path = s.path().to_path_buf();
        let unknown = s.join();
        eprintln!("shadowgpu serve: {}: {} untracked registers touched", path.display(), unknown.len());
        for u in unknown {
            let rw = match (u.read, u.written) {
                (true, true) => "rw",
                (true, false) => "r",
                _ => "w",
            };
            eprintln!("  {:#08x} {rw:2} last {:#010x}", u.offset, u.value);
        }
    }
    Ok(())
}
