//! `shadowgpu demo`: the main job — four vGPUs share one software GPU for a few seconds; prints
//! what each got and writes an SVG timeline and a JSON report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use shadowgpu::demo::{run, svg, DemoConfig, DemoReport, DemoVgpu};
use shadowgpu::hw::Platform;

/// Options of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of vGPUs (types and weights repeat the defaults' pattern when not given).
    #[arg(long, default_value_t = 4)]
    vgpus: usize,
    /// vGPU types, comma separated (GVTg_V5_8, GVTg_V5_4, hmi, batch, ...).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Weights (1..=16), comma separated, overriding the types'.
    #[arg(long, value_delimiter = ',')]
    weights: Vec<u8>,
    /// Seconds the guests run.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Platform of the software GPU (bdw, skl, kbl, cfl, cml).
    #[arg(long, default_value = "cfl")]
    platform: Platform,
    /// No vGPU tries escapes.
    #[arg(long)]
    no_escapes: bool,
    /// Add a neighbour (type compute) that keeps long batches of heavy draws (20 ms of engine
    /// time each) queued on the render engine.
    #[arg(long)]
    hog: bool,
    /// Never preempt (as GVT-g): a long batch holds the render engine to its end.
    #[arg(long)]
    no_preemption: bool,
    /// Where the SVG timeline goes.
    #[arg(long, default_value = "demo.svg")]
    svg: PathBuf,
    /// Where the JSON report goes.
    #[arg(long, default_value = "demo.json")]
    json: PathBuf,
}

fn config(a: &DemoArgs) -> Result<DemoConfig, String> {
    if a.vgpus == 0 || a.vgpus > 16 {
        return Err("--vgpus is 1..=16".into());
    }
    if !(0.1..=600.0).contains(&a.duration) {
        return Err("--duration is 0.1..=600 seconds".into());
    }
    let base = DemoConfig::default();
    let vgpus = (0..a.vgpus)
        .map(|i| {
            let d = base.vgpus.get(i % base.vgpus.len()).cloned();
            let ty =
                a.types.get(i).or(a.types.last()).cloned().or(d.as_ref().map(|d| d.ty.clone())).unwrap_or_default();
            DemoVgpu { ty, weight: a.weights.get(i).copied(), attacker: !a.no_escapes && i == a.vgpus - 1 }
        })
        .collect();
    Ok(DemoConfig {
        platform: a.platform,
        vgpus,
        duration: Duration::from_secs_f64(a.duration),
        hog: a.hog,
        preemption: !a.no_preemption,
        ..base
    })
}

fn print(r: &DemoReport) {
    println!(
        "\n{:<5} {:<10} {:>6} {:>9} {:>5} {:>14} {:>9} {:>9} {:>9}  rejections",
        "vGPU", "type", "weight", "workloads", "lost", "render share", "p50 us", "p99 us", "scan MB/s"
    );
    for v in &r.vgpus {
        let rej: Vec<String> = v.rejections.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "{:<5} {:<10} {:>6} {:>9} {:>5} {:>6.2}% {:>7} {:>9.1} {:>9.1} {:>9.1}  {}",
            v.id,
            v.ty,
            v.weight,
            v.completed,
            v.lost(),
            100.0 * v.render_share,
            v.expected_share.map_or("(frames)".to_string(), |e| format!("({:.1}%)", 100.0 * e)),
            v.latency_us.0,
            v.latency_us.1,
            v.scanned_mb_s(r.wall),
            if rej.is_empty() { "-".to_string() } else { rej.join(", ") }
        );
    }
    for v in r.vgpus.iter().filter(|v| !v.escapes.is_empty()) {
        let rejected = v.escapes.iter().filter(|e| e.rejected).count();
        println!("\nvGPU {} tried {} escapes, {} rejected:", v.id, v.escapes.len(), rejected);
        let mut seen = std::collections::BTreeMap::new();
        for e in &v.escapes {
            seen.entry(e.attempt).or_insert((0, e.reason.clone())).0 += 1;
        }
        for (attempt, (n, reason)) in seen {
            println!("  {n:>3} x {attempt}: {reason}");
        }
    }
    for v in r.vgpus.iter().filter(|v| !v.frames.is_empty()) {
        let ms = |p: f64| v.frame_percentile(p).unwrap_or(0) as f64 / 1e6;
        let wall = |p: f64| v.frame_wall_percentile(p).unwrap_or(0) as f64 / 1e6;
        println!(
            "\nvGPU {} ({}) rendered {} frames at {:.1} Hz{}: latency in render-engine time p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (wall p50 {:.2} ms, p99 {:.2} ms); {} took longer than a refresh ({:.1} ms)",
            v.id,
            v.ty,
            v.frames.len(),
            1.0 / r.frame_period.as_secs_f64().max(1e-9),
            if r.preemption { "" } else { " (preemption off)" },
            ms(50.0),
            ms(99.0),
            ms(100.0),
            wall(50.0),
            wall(99.0),
            v.frames_late(r.frame_period),
            r.frame_period.as_secs_f64() * 1e3,
        );
    }
    let busy: Vec<String> =
        r.engines.iter().map(|e| format!("{} {:.0} ms", e.engine.name(), e.busy_ns as f64 / 1e6)).collect();
    println!("\nengine time used ({:.1} s wall): {}", r.wall.as_secs_f64(), busy.join(", "));
}

/// Runs `demo`.
pub fn run_demo(a: &DemoArgs) -> ExitCode {
    let cfg = match config(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shadowgpu demo: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "shadowgpu demo: {} vGPUs on a software {} GPU for {:.1} s{}",
        cfg.vgpus.len() + usize::from(cfg.hog),
        cfg.platform,
        cfg.duration.as_secs_f64(),
        if cfg.preemption { "" } else { ", preemption off" }
    );
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}%")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = run(&cfg, &|f| bar.set_position((f * 1000.0) as u64));
    bar.finish_and_clear();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shadowgpu demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    print(&report);
    let mut ok = true;
    for (path, body) in [
        (&a.svg, svg::timeline_svg(&report)),
        (&a.json, serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()),
    ] {
        match std::fs::write(path, body) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("shadowgpu demo: {}: {e}", path.display());
                ok = false;
            }
        }
    }
    let escaped = report.vgpus.iter().flat_map(|v| &v.escapes).filter(|e| !e.rejected).count();
    let lost: u64 = report.vgpus.iter().map(|v| v.lost()).sum();
    if escaped > 0 || lost > 0 {
        eprintln!("shadowgpu demo: {escaped} escapes accepted, {lost} workloads lost");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
