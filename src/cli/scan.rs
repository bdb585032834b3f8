//! `shadowgpu scan`: the scanner's command-line face, a debugging tool like intel_error_decode.
//!
//! Exit status: 0 when the stream is accepted, 1 when it is rejected, 2 on a usage or file error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};
use shadowgpu::cmd::image::GmImage;
use shadowgpu::cmd::{
    scan_ring, AddrSpace, BufferKind, CmdDesc, Events, GmRange, GmWindows, RingSpec, ScanLimits, ScanObserver,
    ScanParams, Verdict, PAGE_SIZE,
};
use shadowgpu::hw::{Engine, Platform};

/// Arguments of `shadowgpu scan`.
#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Platform: bdw, skl, kbl, cfl or cml.
    #[arg(long, default_value = "skl")]
    platform: Platform,
    /// Engine: rcs, bcs, vcs, vcs2 or vecs.
    #[arg(long, default_value = "rcs")]
    engine: Engine,
    /// The vGPU's aperture window, BASE:SIZE (hex with 0x, or decimal with an optional K/M/G suffix).
    #[arg(long, value_parser = parse_range)]
    aperture: GmRange,
    /// The vGPU's hidden window, BASE:SIZE.
    #[arg(long, value_parser = parse_range, default_value = "0:0")]
    hidden: GmRange,
    /// The ring: FILE@GMADDR. The file's bytes are the ring from head 0 to tail = file length.
    #[arg(long, value_parser = parse_placement)]
    ring: (PathBuf, u64),
    /// A buffer in GGTT space: FILE@GMADDR (repeatable).
    #[arg(long, value_parser = parse_placement)]
    batch: Vec<(PathBuf, u64)>,
    /// A buffer in PPGTT space (identity mapped for this tool): FILE@ADDR (repeatable).
    #[arg(long, value_parser = parse_placement)]
    ppgtt: Vec<(PathBuf, u64)>,
    /// Address space of surface addresses that carry no GGTT selector: ppgtt or ggtt.
    #[arg(long, default_value = "ppgtt", value_parser = parse_space)]
    surfaces: AddrSpace,
    /// GGTT address of the guest's status page (target of index-mode writes).
    #[arg(long, value_parser = parse_num)]
    hwsp: Option<u64>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Print only the verdict and the counts.
    #[arg(long)]
    summary: bool,
}

fn parse_num(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => digits.replace('_', "").parse::<u64>(),
    }
    .map_err(|e| format!("`{s}`: {e}"))?;
    v.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_range(s: &str) -> Result<GmRange, String> {
    let (b, z) = s.split_once(':').ok_or_else(|| format!("`{s}`: expected BASE:SIZE"))?;
    Ok(GmRange::new(parse_num(b)?, parse_num(z)?))
}

fn parse_placement(s: &str) -> Result<(PathBuf, u64), String> {
    let (f, a) = s.rsplit_once('@').ok_or_else(|| format!("`{s}`: expected FILE@ADDRESS"))?;
    Ok((PathBuf::from(f), parse_num(a)?))
}

fn parse_space(s: &str) -> Result<AddrSpace, String> {
    match s {
        "ggtt" => Ok(AddrSpace::Ggtt),
        "ppgtt" => Ok(AddrSpace::Ppgtt),
        _ => Err(format!("`{s}`: expected ggtt or ppgtt")),
    }
}

struct Line {
    buffer: BufferKind,
    offset: u64,
    name: &'static str,
    len: usize,
    addrs: Vec<(&'static str, AddrSpace, u64)>,
    verdict: Verdict,
}

struct Listing {
    lines: Vec<Line>,
    keep: bool,
    surfaces: AddrSpace,
}

impl ScanObserver for Listing {
    fn command(&mut self, buffer: BufferKind, offset: u64, desc: &'static CmdDesc, cmd: &[u32], verdict: Verdict) {
        if !self.keep {
            return;
        }
        let mut addrs = Vec::new();
        for f in desc.addrs {
            for i in 0..f.elements(cmd.len()) {
                if let Some(a) = f.read(cmd, i) {
                    addrs.push((f.name, f.space.resolve(cmd, self.surfaces), a));
                }
            }
        }
        self.lines.push(Line { buffer, offset, name: desc.name, len: cmd.len(), addrs, verdict });
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("shadowgpu scan: {msg}");
    ExitCode::from(2)
}

/// Runs `shadowgpu scan`.
pub fn run(a: &ScanArgs) -> ExitCode {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut ring = match read(&a.ring.0) {
        Ok(b) => b,
        Err(e) => return usage_error(&e),
    };
    // The tail must be qword aligned: pad with MI_NOOP.
    ring.resize(ring.len().div_ceil(8) * 8, 0);
    let tail = ring.len() as u64;
    let size = (tail / PAGE_SIZE + 1) * PAGE_SIZE;
    if size > 2 << 20 {
        return usage_error("ring file is larger than the 2 MiB a ring can hold");
    }
    let mut b = GmImage::builder();
    b.place(AddrSpace::Ggtt, a.ring.1, ring);
    // Back the rest of the ring so the whole ring is mapped, as it is in a guest.
    b.back(AddrSpace::Ggtt, GmRange::new(a.ring.1, size));
    for (spaces, space) in [(&a.batch, AddrSpace::Ggtt), (&a.ppgtt, AddrSpace::Ppgtt)] {
        for (p, addr) in spaces {
            match read(p) {
                Ok(bytes) => {
                    b.place(space, *addr, bytes);
                }
                Err(e) => return usage_error(&e),
            }
        }
    }
    let img = match b.build() {
        Ok(i) => i,
        Err(e) => return usage_error(&e.to_string()),
    };
    let params = ScanParams {
        gen: a.platform.gen(),
        engine: a.engine,
        windows: GmWindows { aperture: a.aperture, hidden: a.hidden },
        ring: RingSpec { start: a.ring.1, size: size as u32, head: 0, tail: tail as u32 },
        surfaces: a.surfaces,
        hwsp: a.hwsp,
        limits: ScanLimits::default(),
    };
    let mut listing = Listing { lines: Vec::new(), keep: !a.summary, surfaces: a.surfaces };
    let result = scan_ring(&img.mem, &img.xlate, &params, &mut listing);
    let out = std::io::stdout();
    let mut out = out.lock();
    let written =
        if a.json { write_json(&mut out, &listing, &result) } else { write_text(&mut out, &listing, &result) };
    if let Err(e) = written {
        return usage_error(&format!("writing output: {e}"));
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

type ScanResult = Result<shadowgpu::cmd::ScannedWorkload, shadowgpu::cmd::ScanError>;

fn write_text(out: &mut impl Write, l: &Listing, r: &ScanResult) -> std::io::Result<()> {
    for line in &l.lines {
        write!(out, "{:<24} +{:#07x} {:<36} len={:<3}", line.buffer.to_string(), line.offset, line.name, line.len)?;
        for (name, space, a) in &line.addrs {
            write!(out, " {}={space}:{a:#x}", name.replace(' ', "_"))?;
        }
        let v = match line.verdict {
            Verdict::Accepted => "ok",
            Verdict::Patched => "patched",
        };
        writeln!(out, " {v}")?;
    }
    match r {
        Ok(w) => writeln!(
            out,
            "accepted: {} commands, {} MI_NOOP dwords, {} batch buffers, {} bytes scanned, {} patched, events: {}",
            w.stats.commands,
            w.stats.noops,
            w.batches.len(),
            w.stats.bytes_copied,
            w.stats.patched,
            event_names(w.events)
        ),
        Err(e) => writeln!(out, "rejected: {e}"),
    }
}

fn event_names(e: Events) -> String {
    let names: Vec<&str> = e.iter_names().map(|(n, _)| n).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

fn write_json(out: &mut impl Write, l: &Listing, r: &ScanResult) -> std::io::Result<()> {
    let commands: Vec<Value> = l
        .lines
        .iter()
        .map(|c| {
            json!({
                "buffer": c.buffer.to_string(),
                "offset": c.offset,
                "name": c.name,
                "length": c.len,
                "addresses": c.addrs.iter().map(|(n, s, a)| json!({"field": n, "space": s.to_string(), "address": format!("{a:#x}")})).collect::<Vec<_>>(),
                "verdict": match c.verdict { Verdict::Accepted => "ok", Verdict::Patched => "patched" },
            })
        })
        .collect();
    let doc = match r {
        Ok(w) => json!({
            "verdict": "accepted",
            "commands": commands,
            "stats": {
                "commands": w.stats.commands,
                "noops": w.stats.noops,
                "batches": w.batches.len(),
                "bytes_scanned": w.stats.bytes_copied,
                "patched": w.stats.patched,
            },
            "events": event_names(w.events),
        }),
        Err(e) => json!({
            "verdict": "rejected",
            "commands": commands,
            "error": {
                "buffer": e.at.buffer.to_string(),
                "offset": e.at.offset,
                "command": e.at.command,
                "reason": e.reason.to_string(),
            },
        }),
    };
    writeln!(out, "{doc:#}")
}
