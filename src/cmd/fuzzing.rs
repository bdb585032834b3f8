//! Entry points shared by the fuzz targets in `fuzz/` and the corpus replay under `cargo test`.
//!
//! Each function interprets arbitrary bytes as a scanner input, runs the scanner, and checks the
//! invariants that must hold whatever the input: it returns `Err` describing a violated invariant
//! (the fuzz target turns that into a crash), never panics itself. `Ok` says whether the scanner
//! accepted the input.

use super::emit::{CmdBuf, PostSync};
use super::image::GmImage;
use super::{
    scan_ring, AddrSpace, BufferKind, CmdDesc, CommandTable, GmRange, GmWindows, RingSpec, ScanError, ScanLimits,
    ScanObserver, ScanParams, ScannedWorkload, ShadowBuffer, Verdict,
};
use crate::hw::{Engine, Gen};

const APERTURE: GmRange = GmRange::new(0x10_0000, 0x10_0000);
const HIDDEN: GmRange = GmRange::new(0x80_0000, 0x10_0000);
const RING: u64 = 0x10_0000;
/// Where the pool (the input's bytes after the ring) sits in GGTT and PPGTT space.
pub const POOL: u64 = 0x11_0000;
const BUDGET: u64 = 1 << 20;
const MAX_BATCHES: usize = 64;

/// Scanner input from bytes: `[engine, flags, ring_dwords_lo, ring_dwords_hi, ring..., pool...]`.
/// `flags` bit 0 selects GGTT surfaces, bit 1 provides a status page, bit 2 selects Gen8.
pub fn scan_bytes(data: &[u8]) -> Result<bool, String> {
    let Some((params, windows, result)) = scan_input(data)? else {
        return Ok(false);
    };
    let Ok(w) = result else { return Ok(false) };
    check(&params, &windows, &w).map(|()| true)
}

type Outcome = (ScanParams, GmWindows, Result<ScannedWorkload, ScanError>);

fn scan_input(data: &[u8]) -> Result<Option<Outcome>, String> {
    let (head, rest) = data.split_at(data.len().min(4));
    let &[engine, flags, lo, hi] = head else {
        return Ok(None);
    };
    let engine = Engine::ALL.get(usize::from(engine) % 5).copied().unwrap_or(Engine::Rcs);
    let ring_len = (usize::from(u16::from_le_bytes([lo, hi])) * 4).min(rest.len()) & !7;
    let (ring, pool) = rest.split_at(ring_len);
    let img = GmImage::builder()
        .place(AddrSpace::Ggtt, RING, ring.to_vec())
        .back(AddrSpace::Ggtt, GmRange::new(RING, 0x1_0000))
        .place(AddrSpace::Ggtt, POOL, pool.to_vec())
        .place(AddrSpace::Ppgtt, POOL, pool.to_vec())
        .build()
        .map_err(|e| format!("image: {e}"))?;
    let windows = GmWindows { aperture: APERTURE, hidden: HIDDEN };
    let params = ScanParams {
        gen: if flags & 4 != 0 { Gen::Gen8 } else { Gen::Gen9 },
        engine,
        windows,
        ring: RingSpec { start: RING, size: 0x1_0000, head: 0, tail: ring_len as u32 },
        surfaces: if flags & 1 != 0 { AddrSpace::Ggtt } else { AddrSpace::Ppgtt },
        hwsp: (flags & 2 != 0).then_some(APERTURE.base + 0x8000),
        limits: ScanLimits { max_bytes: BUDGET, max_batches: MAX_BATCHES },
    };
    let fast = scan_ring(&img.mem, &img.xlate, &params, &mut ());
    // The general path, which every observer that lists commands takes, must agree with the fast path.
    let general = scan_ring(&img.mem, &img.xlate, &params, &mut EveryCommand);
    if general != fast {
        return Err(format!("fast path {:?} and general path {:?} disagree", fast.err(), general.err()));
    }
    Ok(Some((params, windows, fast)))
}

fn check(params: &ScanParams, windows: &GmWindows, w: &ScannedWorkload) -> Result<(), String> {
    if w.stats.bytes_copied > BUDGET {
        return Err(format!("copied {} bytes over a {BUDGET} budget", w.stats.bytes_copied));
    }
    if w.batches.len() > MAX_BATCHES || w.total_bytes() > BUDGET {
        return Err("more batches or shadow bytes than allowed".into());
    }
    for b in &w.batches {
        if let BufferKind::Batch { space: AddrSpace::Ggtt, gma, .. } = b.kind {
            if !windows.contains(gma, 4) {
                return Err(format!("accepted a GGTT batch at {gma:#x} outside the windows"));
            }
        }
    }
    for r in &w.relocs {
        let ok = w.buffer(r.buffer).is_some_and(|b| r.dword + 3 <= b.dwords.len()) && r.target < w.batches.len();
        if !ok {
            return Err(format!("dangling relocation {r:?}"));
        }
    }
    for b in std::iter::once(&w.ring).chain(&w.batches) {
        operands_inside(params, windows, w, b)?;
    }
    Ok(())
}

/// The oracle behind the scanner: walks an accepted shadow buffer command by command (its own
/// decoding of each command's operands, independent of the scanner's handlers) and checks that
/// every memory operand in the GGTT lies, whole, inside the vGPU's windows, that no interrupt
/// request or host-only command is left, and that no register load names a ring, status-page,
/// execlist, reset or page-table-root register (roots only where the scan recorded the load
/// for the shadow root to be patched in).
fn operands_inside(p: &ScanParams, windows: &GmWindows, w: &ScannedWorkload, b: &ShadowBuffer) -> Result<(), String> {
    let table = CommandTable::for_gen(p.gen);
    let base = p.engine.mmio_base();
    let id = if std::ptr::eq(b, &w.ring) {
        0
    } else {
        w.batches.iter().position(|x| std::ptr::eq(x, b)).map_or(0, |i| i + 1)
    };
    let d = &b.dwords;
    let mut i = 0usize;
    while let Some(&dw0) = d.get(i) {
        if dw0 == 0 {
            i += 1;
            continue;
        }
        let (decoded, len) = table.decode_with_len(p.engine, dw0);
        let super::Decoded::Command(desc) = decoded else {
            return Err(format!("{:?} +{:#x}: accepted an undecodable header {dw0:#010x}", b.kind, 4 * i));
        };
        let cmd = d.get(i..i + len as usize).unwrap_or_default();
        let at = |k: usize| cmd.get(k).copied().unwrap_or(0);
        let a64 = |k: usize, low: u32| u64::from(at(k) & !low) | u64::from(at(k + 1)) << 32;
        let mut ggtt: Vec<(u64, u64)> = Vec::new();
        let mut regs: Vec<(u32, usize)> = Vec::new();
        let bit = |n: u32| dw0 & (1 << n) != 0;
        match desc.name {
            "MI_STORE_DATA_IMM" if bit(22) => ggtt.push((a64(1, 3), 4 * (len as u64).saturating_sub(3))),
            "MI_LOAD_REGISTER_MEM" => {
                regs.push((at(1), 1));
                if bit(22) {
                    ggtt.push((a64(2, 3), 4));
                }
            }
            "MI_STORE_REGISTER_MEM" if bit(22) => ggtt.push((a64(2, 3), 4)),
            "MI_ATOMIC" if bit(22) => ggtt.push((a64(1, 3), 4 << ((dw0 >> 19) & 3))),
            "MI_SEMAPHORE_WAIT" if bit(22) && !(p.gen == Gen::Gen9 && bit(16)) => ggtt.push((a64(2, 3), 4)),
            "MI_CONDITIONAL_BATCH_BUFFER_END" if bit(22) => ggtt.push((a64(2, 7), 8)),
            "MI_COPY_MEM_MEM" => {
                if bit(21) {
                    ggtt.push((a64(1, 3), 4));
                }
                if bit(22) {
                    ggtt.push((a64(3, 3), 4));
                }
            }
            "MI_REPORT_PERF_COUNT" if at(1) & 1 != 0 => ggtt.push((a64(1, 63), 256)),
            "MI_BATCH_BUFFER_START" if dw0 & (1 << 8) == 0 => ggtt.push((a64(1, 3), 4)),
            "MI_LOAD_REGISTER_IMM" => regs.extend((1..len as usize).step_by(2).map(|k| (at(k), k))),
            "MI_LOAD_REGISTER_REG" => regs.push((at(2), 2)),
            "PIPE_CONTROL" => {
                let dw1 = at(1);
                if dw1 & (1 << 8) != 0 || dw1 & (1 << 21) != 0 && (dw1 >> 14) & 3 != 0 {
                    return Err(format!("{:?} +{:#x}: PIPE_CONTROL notify or index write left", b.kind, 4 * i));
                }
                if dw1 & (1 << 23) != 0 {
                    regs.push((at(2), 2));
                } else if (dw1 >> 14) & 3 != 0 && dw1 & (1 << 24) != 0 {
                    ggtt.push((a64(2, 7), 8));
                }
            }
            "MI_FLUSH_DW" => {
                if bit(8) || bit(21) && (dw0 >> 14) & 3 != 0 {
                    return Err(format!("{:?} +{:#x}: MI_FLUSH_DW notify or index write left", b.kind, 4 * i));
                }
                if (dw0 >> 14) & 3 != 0 && at(1) & 4 != 0 {
                    ggtt.push((a64(1, 7), 8));
                }
            }
            "MI_USER_INTERRUPT" | "MI_UPDATE_GTT" | "MI_SET_CONTEXT" | "MI_DISPLAY_FLIP" | "MI_STORE_DATA_INDEX" => {
                return Err(format!("{:?} +{:#x}: {} left in the copy", b.kind, 4 * i, desc.name));
            }
            _ => {}
        }
        for (a, size) in ggtt {
            if !windows.contains(a, size.max(1)) {
                return Err(format!(
                    "{:?} +{:#x} {}: ggtt {a:#x}+{size} is outside the windows",
                    b.kind,
                    4 * i,
                    desc.name
                ));
            }
        }
        for (r, k) in regs {
            let r = r & 0x007f_fffc;
            let rel = r.wrapping_sub(base);
            let host = matches!(rel, 0x30..=0x3c | 0x80 | 0x230..=0x23c | 0x244 | 0x29c | 0x3a0) || r == 0x941c;
            let root = (0x270..0x290).contains(&rel);
            let recorded = w.root_loads.iter().any(|l| l.buffer == id && l.dword == i + k + 1);
            if host || (root && !recorded) {
                return Err(format!("{:?} +{:#x} {}: loads register {r:#x}", b.kind, 4 * i, desc.name));
            }
        }
        i += len.max(1) as usize;
    }
    Ok(())
}

/// An observer that asks for every command, forcing the scanner's general path.
struct EveryCommand;

impl ScanObserver for EveryCommand {
    fn command(&mut self, _: BufferKind, _: u64, _: &'static CmdDesc, _: &[u32], _: Verdict) {}
}

/// Representative inputs for [`scan_bytes`]: the seeds of the fuzz corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let pack = |engine: u8, flags: u8, ring: &CmdBuf, pool: &CmdBuf| {
        let mut ring = ring.clone();
        ring.align_qword();
        let n = ring.dwords.len() as u16;
        let mut v = vec![engine, flags];
        v.extend(n.to_le_bytes());
        v.extend(ring.to_bytes());
        v.extend(pool.to_bytes());
        v
    };
    let g = AddrSpace::Ggtt;
    let p = AddrSpace::Ppgtt;
    let mut out = Vec::new();
    let mut r = CmdBuf::new();
    r.store_dword(g, 0x10_8000, 1).user_interrupt().pipe_control(0, PostSync::WriteImmediate, g, 0x10_9000, 5, true);
    out.push(pack(0, 0, &r, &CmdBuf::new()));
    let mut pool = CmdBuf::new();
    pool.lri(&[(0x2600, 1), (0x7004, 0x10001)]).srm(0x2358, g, 0x10_a000).bb_start(g, POOL + 0x100, true).bb_end();
    pool.noop(64 - pool.dwords.len());
    pool.store_qword(g, 0x80_0000, 7).bb_end();
    let mut r = CmdBuf::new();
    r.bb_start(g, POOL, false);
    out.push(pack(0, 2, &r, &pool));
    let mut blt = CmdBuf::new();
    blt.xy_src_copy(0x10_8000, 256, 0x10_c000, 256, 16, 16).xy_color(0x80_0000, 64, 8, 8, 0).flush_dw(
        PostSync::WriteImmediate,
        g,
        0x10_a000,
        1,
        true,
        true,
    );
    out.push(pack(1, 1, &blt, &CmdBuf::new()));
    let mut vcs = CmdBuf::new();
    vcs.raw(&[0x6800_0000]) // MFX_WAIT
        .lri(&[(0x1_2600, 0)])
        .flush_dw(PostSync::None, g, 0, 0, false, false);
    out.push(pack(2, 4, &vcs, &CmdBuf::new()));
    let mut lp = CmdBuf::new();
    lp.store_dword(p, 0x1000, 1).bb_start(p, POOL, false);
    let mut r = CmdBuf::new();
    r.bb_start(p, POOL, false);
    out.push(pack(0, 0, &r, &lp));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_accepted_inputs() {
        for (i, s) in seeds().iter().enumerate() {
            if let Ok(Some((_, _, Err(e)))) = scan_input(s) {
                panic!("seed {i}: {e}");
            }
            assert_eq!(scan_bytes(s), Ok(true));
        }
        assert_eq!(scan_bytes(&[]), Ok(false));
        assert!(scan_bytes(&[9, 9, 0xff, 0xff, 1, 2, 3]).is_ok());
    }
}
