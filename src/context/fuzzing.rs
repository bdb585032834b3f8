//! The entry point shared by the `context` fuzz target and its corpus replay under `cargo test`:
//! a guest that writes its context image and submits it again and again (restore inhibit on and
//! off, the same context resubmitted as a lite restore would, written back in between), each
//! shadow context run on the software GPU.
//!
//! Invariants checked after every step, whatever the input: the ring context the engine loads is
//! the host's (ring registers, batch state, roots); a restore-inhibit context loads exactly the
//! clean engine context; any other engine context the shadow holds passes the context-image scan
//! again as it stands (so no skipped copy or skipped scan ever loads unchecked bytes); and running
//! it leaves the engine's ring registers where the host put them and writes no GPU-wide register.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::image::{context_size, idx, GuestContext, RingRegs};
use super::shadow::{blank_engine_context, ShadowContext, ShadowPlan};
use crate::cmd::{
    scan_context_image, AddrSpace, GmRange, GmWindows, LinearTranslation, RingSpec, ScanLimits, ScanParams,
    ScannedWorkload, PAGE_SIZE,
};
use crate::host::sim::{SimConfig, SimGpu};
use crate::host::{HostGpu, HostJob};
use crate::hw::lrc::{self, ENGINE_CONTEXT_DWORD, PAGE_DWORDS};
use crate::hw::{Engine, Gen};
use crate::mm::ShadowRoot;

const WINDOW: GmRange = GmRange::new(0x10_0000, 0x20_0000);
const LRCA: u64 = 0x10_0000;
/// Most steps one input runs.
const MAX_STEPS: usize = 64;

fn gpu(gen: Gen) -> &'static Mutex<SimGpu> {
    static GEN8: OnceLock<Mutex<SimGpu>> = OnceLock::new();
    static GEN9: OnceLock<Mutex<SimGpu>> = OnceLock::new();
    let cell = if gen == Gen::Gen8 { &GEN8 } else { &GEN9 };
    cell.get_or_init(|| Mutex::new(SimGpu::new(SimConfig { gen, ..SimConfig::default() })))
}

/// Runs the steps the bytes describe: `[engine, flags, steps...]`. `flags` bit 0 selects Gen8.
/// Each step is a tag byte and its operands:
/// - `0 i:u16 v:u32`: the guest writes dword `i % 1024` of its register-state page;
/// - `1 p:u8 i:u16 v:u32`: the guest writes dword `i` of page `p` of its image;
/// - `2 n:u8 (r:u16 v:u32)*`: the guest writes an MI_LOAD_REGISTER_IMM of `n % 16` registers
///   (offsets from the engine's base) at the start of its engine context;
/// - `3 c:u32`: the guest writes CONTEXT_CONTROL;
/// - `4`: submit (populate the shadow, run it, write it back);
/// - `5`: submit without running (a failure or cancel before the engine ran it);
/// - `6`: the shadow is invalidated (the guest rewrote its GGTT entries).
///
/// `Ok` says whether some submission was accepted; `Err` is a broken invariant.
pub fn image_bytes(data: &[u8]) -> Result<bool, String> {
    let Some((&[engine, flags], mut rest)) = data.split_first_chunk::<2>() else {
        return Ok(false);
    };
    let engine = Engine::ALL.get(usize::from(engine) % 5).copied().unwrap_or(Engine::Rcs);
    let gen = if flags & 1 != 0 { Gen::Gen8 } else { Gen::Gen9 };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), WINDOW.size as usize)])
        .map_err(|e| format!("memory: {e}"))?;
    let mut xlate = LinearTranslation::new();
    xlate.map(AddrSpace::Ggtt, WINDOW, GuestAddress(0));
    let gpu = gpu(gen).lock();
    let layout = gpu.layout(engine);
    let clean: Arc<[u32]> = blank_engine_context(gen, engine).into();
    let mut shadow = ShadowContext::new(gen, engine, clean.clone());
    let windows = GmWindows { aperture: WINDOW, hidden: GmRange::default() };
    let params = ScanParams {
        gen,
        engine,
        windows,
        ring: RingSpec { start: 0, size: 4096, head: 0, tail: 0 },
        surfaces: AddrSpace::Ppgtt,
        hwsp: Some(LRCA),
        limits: ScanLimits::default(),
    };
    let guest = GuestContext {
        lrca: LRCA,
        ring: RingRegs {
            ring: RingSpec { start: WINDOW.base + 0x10_0000, size: 4096, head: 0, tail: 0 },
            head_wrap: 0,
            ctl: 1,
        },
        pdps: [0; 4],
        indirect_ctx: None,
        indirect_ctx_offset: 0,
        bb_per_ctx: None,
        bb_per_ctx_flags: 0,
    };
    let plan = ShadowPlan {
        ring_start: layout.ring_start,
        ring_size: layout.ring_size,
        head: 0,
        tail: 0,
        root: ShadowRoot::L4(0),
        indirect_ctx: None,
        bb_per_ctx: None,
    };
    let pages = context_size(gen, engine) / PAGE_SIZE;
    let state = |i: u64| GuestAddress(LRCA - WINDOW.base + PAGE_SIZE + 4 * (i % PAGE_DWORDS as u64));
    let u16_at = |r: &[u8]| r.first_chunk::<2>().map(|b| u16::from_le_bytes(*b));
    let u32_at = |r: &[u8]| r.first_chunk::<4>().map(|b| u32::from_le_bytes(*b));
    let mut accepted = false;
    for _ in 0..MAX_STEPS {
        let Some((&tag, tail)) = rest.split_first() else { break };
        rest = tail;
        let w = |gpa: GuestAddress, v: u32| mem.write_obj(v, gpa).map_err(|e| format!("write: {e}"));
        match tag % 7 {
            0 => {
                let (Some(i), Some(v)) = (u16_at(rest), rest.get(2..).and_then(u32_at)) else { break };
                rest = rest.get(6..).unwrap_or_default();
                w(state(u64::from(i)), v)?;
            }
            1 => {
                let (Some(&p), Some(i), Some(v)) =
                    (rest.first(), rest.get(1..).and_then(u16_at), rest.get(3..).and_then(u32_at))
                else {
                    break;
                };
                rest = rest.get(7..).unwrap_or_default();
                let page = u64::from(p) % pages;
                w(GuestAddress(LRCA - WINDOW.base + page * PAGE_SIZE + 4 * (u64::from(i) % 1024)), v)?;
            }
            2 => {
                let Some(&n) = rest.first() else { break };
                rest = rest.get(1..).unwrap_or_default();
                let n = usize::from(n % 16).max(1);
                w(state(ENGINE_CONTEXT_DWORD as u64), lrc::lri_header(n))?;
                for k in 0..n {
                    let (Some(r), Some(v)) = (u16_at(rest), rest.get(2..).and_then(u32_at)) else { break };
                    rest = rest.get(6..).unwrap_or_default();
                    let at = (ENGINE_CONTEXT_DWORD + 1 + 2 * k) as u64;
                    w(state(at), engine.mmio_base() + u32::from(r & 0xffc))?;
                    w(state(at + 1), v)?;
                }
            }
            3 => {
                let Some(c) = u32_at(rest) else { break };
                rest = rest.get(4..).unwrap_or_default();
                w(state(idx::CONTEXT_CONTROL as u64), c)?;
            }
            4 | 5 => {
                let control: u32 =
                    mem.read_obj(state(idx::CONTEXT_CONTROL as u64)).map_err(|e| format!("read: {e}"))?;
                if shadow.populate(&mem, &xlate, &guest, &plan, &params).is_err() {
                    continue;
                }
                accepted = true;
                check_loaded(&shadow, &clean, control, &mem, &xlate, &params, &plan)?;
                if tag % 7 == 4 {
                    run(&gpu, engine, &mut shadow, &plan)?;
                    shadow.write_back(&mem, &xlate, &guest).map_err(|e| format!("write-back: {e}"))?;
                }
            }
            _ => shadow.invalidate(),
        }
    }
    Ok(accepted)
}

/// What the shadow holds after a successful populate is what the engine may load.
fn check_loaded(
    shadow: &ShadowContext,
    clean: &[u32],
    control: u32,
    mem: &GuestMemoryMmap<()>,
    xlate: &LinearTranslation,
    params: &ScanParams,
    plan: &ShadowPlan,
) -> Result<(), String> {
    let ring_ok = shadow.state(idx::RING_START) == plan.ring_start as u32
        && shadow.state(idx::RING_HEAD) == plan.head
        && shadow.state(idx::RING_TAIL) == plan.tail
        && (idx::BATCH_STATE_FIRST..=idx::BATCH_STATE_LAST).step_by(2).all(|i| shadow.state(i) == 0)
        && shadow.state(idx::PDP3_UDW + 14) == 0;
    if !ring_ok {
        return Err("the shadow's ring context is not the host's".into());
    }
    let (_, engine_part) = shadow.parts();
    if control & lrc::CTX_RESTORE_INHIBIT != 0 {
        if engine_part != clean || shadow.state(idx::CONTEXT_CONTROL) & lrc::CTX_RESTORE_INHIBIT != 0 {
            return Err("a restore-inhibit context does not load the clean engine context".into());
        }
        return Ok(());
    }
    let mut again = engine_part.to_vec();
    scan_context_image(mem, xlate, params, &mut again)
        .map_err(|e| format!("the shadow holds an engine context that fails the scan: {e}"))?;
    Ok(())
}

/// Runs the shadow context with an empty ring; the engine must end where the host put its ring
/// and write no GPU-wide register.
fn run(gpu: &SimGpu, engine: Engine, shadow: &mut ShadowContext, plan: &ShadowPlan) -> Result<(), String> {
    let before = gpu.stream_register_writes().len();
    let mut ring = ScannedWorkload::host_ring(Vec::new());
    let r = gpu.run(engine, HostJob::new(&mut ring, None, shadow, false));
    let base = engine.mmio_base();
    let start = gpu.read_reg(engine, base + crate::hw::reg::ring::START);
    gpu.reset_engine(engine);
    if r.is_ok() && u64::from(start) != plan.ring_start {
        return Err(format!("the engine's RING_START is {start:#x} after the run, not the shadow ring"));
    }
    if gpu.stream_register_writes().len() != before {
        return Err(format!("a context restore wrote a GPU-wide register: {:?}", gpu.stream_register_writes().last()));
    }
    Ok(())
}

/// Representative inputs: the corpus seeds.
pub fn seeds() -> Vec<Vec<u8>> {
    let lri = |regs: &[(u16, u32)]| {
        let mut v = vec![2u8, regs.len() as u8];
        for (r, x) in regs {
            v.extend(r.to_le_bytes());
            v.extend(x.to_le_bytes());
        }
        v
    };
    let control = |c: u32| [vec![3u8], c.to_le_bytes().to_vec()].concat();
    vec![
        // A fresh context recorded with restore inhibit, then used without it.
        [vec![0, 0], control(0x0001_0001), vec![4], control(0x0001_0000), vec![4, 4]].concat(),
        // GPRs and MI_MODE in the engine context, resubmitted (lite restore), then rewritten.
        [vec![1, 0], lri(&[(0x600, 1), (0x9c, 0xffff_0000)]), vec![4, 4], lri(&[(0x604, 2)]), vec![4]].concat(),
        // A hostile load of the ring registers, with and without inhibit, on Gen8 render.
        [vec![0, 1], lri(&[(0x38, 0x10_8000), (0x34, 0)]), control(0x0001_0001), vec![4, 5], control(0), vec![4]]
            .concat(),
        // Inhibit flipped between a submission that did not run and the next one.
        [vec![2, 0], control(0x0001_0001), vec![5], lri(&[(0x3c, 1)]), control(0x0001_0000), vec![4, 6, 4]].concat(),
        // Page 2.. written while the context is the last one run (copies skipped).
        [vec![0, 0], vec![4], vec![1, 3, 4, 0, 0x00, 0, 0x80, 0x11], vec![4, 6, 4]].concat(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold() {
        let mut accepted = 0;
        for s in seeds() {
            accepted += usize::from(image_bytes(&s).unwrap());
        }
        assert!(accepted >= 4);
        assert_eq!(image_bytes(&[]), Ok(false));
    }
}
