//! The software reference GPU: a [`HostGpu`] that really executes shadow workloads.
//!
//! Each engine is a command streamer walking the shadow ring and batches through the host GGTT
//! and the shadow PPGTT (see [`memory`]): MI commands, post-sync writes and linear blits change
//! memory and registers as the hardware would; 3D, media and video commands are consumed with a
//! modelled cost ([`CostModel`]). A workload's engine time is the sum of its costs, so runs are
//! deterministic; one that runs past the hang timeout is stopped and reported as a hang.
//!
//! A run is what the hardware does with an execlist submission: load the shadow context (its
//! register-load lists set the ring, page-table roots and engine state), run the indirect-context
//! and per-context workaround batches, run the ring from head to tail, and save the registers the
//! image lists back into it.
//!
//! ```
//! use std::sync::Arc;
//! use shadowgpu::host::sim::{SimConfig, SimGpu};
//! use shadowgpu::host::HostGpu;
//! use shadowgpu::hw::{Engine, Gen};
//!
//! let gpu = SimGpu::new(SimConfig::default());
//! assert_eq!(gpu.gen(), Gen::Gen9);
//! let layout = gpu.layout(Engine::Rcs);
//! assert_eq!(layout.ring_size, 2 << 20);
//! ```

mod blit;
pub mod cost;
mod exec;
pub mod memory;
pub mod mmio;
mod regs;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use parking_lot::Mutex;

pub use cost::CostModel;
use exec::{EngineCore, Exec, Stop};
use memory::{SimMemory, SimVgpuMemory};

use super::{placement, EngineLayout, GuestDma, HostError, HostGpu, HostJob, RunReport, VgpuMemory};
use crate::cmd::{GmWindows, PAGE_SIZE};
use crate::hw::{lrc, Engine, EngineMask, Gen};
use crate::mm::{GmLayout, HostReserve};
use regs::GlobalRegs;

pub use exec::reg;
pub use regs::StreamWrite;

/// What the software GPU models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Generation (selects command tables and the timestamp clock).
    pub gen: Gen,
    /// Engines present.
    pub engines: EngineMask,
    /// The GGTT and aperture sizes.
    pub layout: GmLayout,
    /// What the host keeps of the GGTT (the shadow areas live in its hidden part).
    pub reserve: HostReserve,
    /// Engine time of each kind of work.
    pub cost: CostModel,
    /// Engines run no faster than real time: a run whose engine time gets ahead of the wall time
    /// since it started waits, so modelled work (a heavy draw, a video decode) takes as long on
    /// the wall clock as its engine time says (default off: tests run as fast as the CPU allows).
    pub real_time: bool,
}

impl Default for SimConfig {
    /// A Gen9 GT2 (render, blitter, video, video enhancement) with the desktop GGTT layout.
    fn default() -> Self {
        SimConfig {
            gen: Gen::Gen9,
            engines: EngineMask::RCS | EngineMask::BCS | EngineMask::VCS | EngineMask::VECS,
            layout: GmLayout::DESKTOP,
            reserve: HostReserve::default(),
            cost: CostModel::default(),
            real_time: false,
        }
    }
}

/// One engine's streamer state, and the scratch state of the run in progress.
#[derive(Debug)]
struct EngineSlot {
    core: EngineCore,
    /// Workloads completed, for tests and statistics.
    runs: u64,
}

/// The software GPU.
#[derive(Debug)]
pub struct SimGpu {
    cfg: SimConfig,
    mem: Arc<SimMemory>,
    global: Arc<GlobalRegs>,
    /// Each engine's clock, readable while it runs.
    clocks: Vec<Option<Arc<std::sync::atomic::AtomicU64>>>,
    /// Per engine: stop the running workload at its next command (`HostGpu::abort`).
    aborts: Vec<std::sync::atomic::AtomicBool>,
    engines: Vec<Option<Mutex<EngineSlot>>>,
    mmio: mmio::Mmio,
}

/// Statistics of one engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimEngineStats {
    /// Workloads completed.
    pub runs: u64,
    /// Engine time since creation, ns.
    pub clock_ns: u64,
}

impl SimGpu {
    /// A software GPU as `cfg` describes.
    pub fn new(cfg: SimConfig) -> Self {
        let global = Arc::new(GlobalRegs::default());
        let engines: Vec<Option<Mutex<EngineSlot>>> = Engine::ALL
            .iter()
            .map(|&e| {
                cfg.engines
                    .has(e)
                    .then(|| Mutex::new(EngineSlot { core: EngineCore::new(e, cfg.gen, global.clone()), runs: 0 }))
            })
            .collect();
        let mem = Arc::new(SimMemory::new(cfg.layout.total));
        let clocks = engines.iter().map(|e| e.as_ref().map(|s| s.lock().core.clock.clone())).collect();
        let aborts = Engine::ALL.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        let gpu = SimGpu { mem, global, clocks, aborts, cfg, engines, mmio: Default::default() };
        // Back each engine's per-process status page now: index stores may land there any time.
        for e in Engine::ALL.into_iter().filter(|&e| cfg.engines.has(e)) {
            let _ = gpu.mem.stage_ggtt(gpu.context_area(e), &[0; PAGE_SIZE as usize]);
        }
        gpu
    }

    /// The memory, for tests and the register-level model.
    pub fn memory(&self) -> &Arc<SimMemory> {
        &self.mem
    }

    /// Every write a command stream made to a register its engine does not own (a GPU-wide
    /// register: reset, GTT and display control, power management, another engine's registers).
    /// No guest stream should ever reach one; adversarial tests check this stays empty.
    pub fn stream_register_writes(&self) -> Vec<StreamWrite> {
        self.global.stream_writes()
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Statistics of `engine`.
    pub fn engine_stats(&self, engine: Engine) -> SimEngineStats {
        self.slot(engine).map_or(SimEngineStats::default(), |s| {
            let s = s.lock();
            SimEngineStats { runs: s.runs, clock_ns: s.core.clock_ns }
        })
    }

    /// The GGTT range of the host's shadow areas, which no vGPU window may overlap.
    pub fn shadow_range(&self) -> GmWindows {
        let base = self.shadow_base();
        GmWindows { aperture: crate::cmd::GmRange::new(base, placement::ENGINE_AREA * 5), hidden: Default::default() }
    }

    fn slot(&self, engine: Engine) -> Option<&Mutex<EngineSlot>> {
        self.engines.get(engine.index())?.as_ref()
    }

    /// The first GGTT address of the shadow areas: the start of the host's hidden reserve.
    fn shadow_base(&self) -> u64 {
        self.cfg.layout.aperture
    }

    /// GGTT address of the engine's context area (page 0 is the per-process status page).
    pub fn context_area(&self, engine: Engine) -> u64 {
        placement::area_base(self.shadow_base(), engine) + placement::CONTEXT_OFF
    }
}

/// Runs a loaded context as the hardware runs an execlist element: restores the ring context,
/// then the engine context unless CONTEXT_CONTROL inhibits it, runs the workaround batches, the
/// batches a preempted run stopped in (the restored batch state) and the ring, and saves the ring
/// context and (unless inhibited) the engine context in the layout of [`hw::lrc`](crate::hw::lrc).
/// Returns whether the run was preempted (the saved image then resumes it). `parts` is the image
/// split as [`ShadowContext::parts_mut`](crate::context::ShadowContext::parts_mut) splits it.
fn run_context(exec: &mut Exec<'_>, parts: (&mut [u32], &mut [u32]), legacy32: bool) -> Result<bool, Stop> {
    let (ring_part, engine_part) = parts;
    let (gen, engine) = (exec.core.gen, exec.core.engine);
    let base = engine.mmio_base();
    exec.legacy32 = legacy32;
    exec.charge(exec.cost.context_restore_ns, "restoring the context")?;
    let state = ring_part.get(lrc::PAGE_DWORDS..).unwrap_or_default();
    exec.restore(state, 1)?;
    // The engine context of the register-state page, then the indirect-context batch (the engine
    // runs it at INDIRECT_CTX_OFFSET of the restore, i915's inside that page), then the render
    // engine's 3D state of pages 2..: what the context saved there wins over the workaround
    // batch (i915's Gen9 one clears a bit of COMMON_SLICE_CHICKEN2, which IGT's
    // gem_ctx_isolation sets from a user batch and reads back in the next one).
    let restore_engine = exec.core.read(base + CONTEXT_CONTROL) & lrc::CTX_RESTORE_INHIBIT == 0;
    let split = (lrc::PAGE_DWORDS - lrc::ENGINE_CONTEXT_DWORD).min(engine_part.len());
    let (page1, pages2) = engine_part.split_at(split);
    let ended = restore_engine && exec.restore(page1, 0)?;
    exec.ppgtt = Some(exec.core.root(legacy32));
    let ctx_ts = exec.core.read(base + reg::CTX_TIMESTAMP);

    // Where a preempted run stopped inside batches (read before the workaround batches, which
    // use the batch registers too).
    let resume = exec.saved_batches();
    exec.preemptible = false;
    let indirect = exec.core.read(base + reg::INDIRECT_CTX);
    if lrc::has_wa_fields(gen, engine) && indirect & 0x3f != 0 {
        exec.run_buffer(u64::from(indirect & !0x3f), u64::from(indirect & 0x3f) * 64)?;
    }
    if restore_engine && !ended {
        exec.restore(pages2, 0)?;
    }
    let per_ctx = exec.core.read(base + reg::BB_PER_CTX_PTR);
    if lrc::has_wa_fields(gen, engine) && per_ctx & 1 != 0 {
        let frame = exec::Frame::ggtt(u64::from(per_ctx & !0xfff));
        exec.run_batches([None, Some(frame), None], 1)?;
    }
    exec.preemptible = true;
    let ran = match resume {
        Some((frames, level)) => exec.run_batches(frames, level).and_then(|()| exec.run_ring()),
        None => exec.run_ring(),
    };
    let preempted = match ran {
        Ok(()) => false,
        Err(Stop::Preempted) => true,
        Err(e) => return Err(e),
    };

    // Save: the context's running time, then the lists.
    let ticks = exec.ns_ticks();
    exec.core.write(base + reg::CTX_TIMESTAMP, ctx_ts.wrapping_add(ticks));
    let state = ring_part.get_mut(lrc::PAGE_DWORDS..).unwrap_or_default();
    for list in lrc::ring_context_lists(gen, engine) {
        save_list(exec.core, &list, state, 0);
    }
    if exec.core.read(base + CONTEXT_CONTROL) & lrc::CTX_SAVE_INHIBIT == 0 {
        // The engine writes its whole engine context, as the hardware does (i915 keeps a redzone
        // after the image to catch a save past its end): the register lists (the render engine's
        // second one its non-privileged pipeline state), MI_NOOP elsewhere, since this model keeps
        // no other 3D state for the render engine's pages 2... Nothing the guest
        // wrote survives a save, so a saved image restores only what the engine had.
        engine_part.fill(0);
        let lists = std::iter::once(lrc::engine_context_list(gen, engine)).chain(lrc::render_state_list(gen, engine));
        for list in lists {
            save_list(exec.core, &list, engine_part, lrc::ENGINE_CONTEXT_DWORD);
        }
    }
    Ok(preempted)
}

/// CONTEXT_CONTROL, relative to the engine's base.
const CONTEXT_CONTROL: u32 = 0x244;

/// Writes one register list as the engine saves it: header, then each register's offset and
/// value (masked registers with every mask bit set, so a restore loads the whole value). `out`
/// holds the register-state page from dword `first`.
fn save_list(core: &EngineCore, list: &lrc::LriList, out: &mut [u32], first: usize) {
    let base = core.engine.mmio_base();
    let mut put = |i: usize, v: u32| {
        if let Some(d) = i.checked_sub(first).and_then(|i| out.get_mut(i)) {
            *d = v;
        }
    };
    put(list.header, lrc::lri_header(list.regs.len()));
    for (k, &r) in list.regs.iter().enumerate() {
        let v = core.read(base + r);
        let v = if regs::masked(core.engine, base + r) { 0xffff_0000 | v } else { v };
        put(list.value_index(k) - 1, base + r);
        put(list.value_index(k), v);
    }
}

impl HostGpu for SimGpu {
    fn gen(&self) -> Gen {
        self.cfg.gen
    }

    fn engines(&self) -> EngineMask {
        self.cfg.engines
    }

    fn layout(&self, engine: Engine) -> EngineLayout {
        placement::layout(self.shadow_base(), engine)
    }

    fn attach_vgpu(&self, guest: Arc<dyn GuestDma>) -> Result<Box<dyn VgpuMemory>, HostError> {
        let slot = self.mem.attach(guest).ok_or_else(|| HostError::Attach("every guest slot is in use".into()))?;
        let mut m = SimVgpuMemory::new(self.mem.clone(), slot);
        m.alloc_scratch().map_err(HostError::Attach)?;
        Ok(Box::new(m))
    }

    fn run(&self, engine: Engine, mut job: HostJob<'_>) -> Result<RunReport, HostError> {
        let slot = self.slot(engine).ok_or(HostError::NoEngine(engine))?;
        let mut slot = slot.lock();
        placement::place(self.shadow_base(), engine, &mut job, &mut |gma, dw| {
            self.mem.stage_ggtt(gma, zerocopy::IntoBytes::as_bytes(dw))
        })
        .map_err(|why| HostError::Placement { engine, why })?;
        let pphwsp = self.context_area(engine);
        // An abort asked for before this run (of a run that ended meanwhile) is not for it.
        let abort = self.aborts.get(engine.index());
        if let Some(a) = abort {
            a.store(false, std::sync::atomic::Ordering::Release);
        }
        let HostJob { ring, context, legacy32, preempt, timeout_ns, mut fetcher, .. } = job;
        let (shadow_base, mem) = (self.shadow_base(), &self.mem);
        let mut resolve = |addr: u64| -> Result<Option<(u64, u64)>, Stop> {
            if !placement::is_trap(shadow_base, engine, addr) {
                return Ok(None);
            }
            let f = fetcher.as_mut().ok_or_else(|| Stop::Fault("a batch start into the trap window".into()))?;
            let mut stage = |gma: u64, dw: &[u32]| mem.stage_ggtt(gma, zerocopy::IntoBytes::as_bytes(dw));
            placement::resolve(shadow_base, engine, ring, f, addr, &mut stage).map(Some).map_err(|e| match e {
                placement::FetchFailure::Refused(why) => Stop::Refused(why),
                placement::FetchFailure::Placement(why) => Stop::Fault(why),
            })
        };
        let mut exec = Exec::new(&self.mem, &mut slot.core, &self.cfg.cost);
        exec.pphwsp = pphwsp;
        exec.preempt = preempt;
        exec.abort = abort;
        exec.fetch = Some(&mut resolve);
        exec.real_time = self.cfg.real_time.then(std::time::Instant::now);
        if let Some(t) = timeout_ns {
            exec.timeout_ns = t;
        }
        let r = run_context(&mut exec, context.parts_mut(), legacy32);
        let (ns, at, mut report) = (exec.ns, exec.at, exec.report);
        report.engine_ns = ns;
        match r {
            Ok(preempted) => {
                report.preempted = preempted;
                if !preempted {
                    slot.runs += 1;
                }
                Ok(report)
            }
            Err(Stop::Hang(why)) => Err(HostError::Hang { engine, engine_ns: ns, at, why }),
            Err(Stop::Fault(why)) => Err(HostError::Fault { engine, at, why }),
            Err(Stop::Preempted) => Err(HostError::Fault { engine, at, why: "preempted outside a run".into() }),
            Err(Stop::Aborted) => Err(HostError::Aborted { engine }),
            Err(Stop::Refused(why)) => Err(HostError::Refused { engine, engine_ns: ns, why }),
        }
    }

    fn reset_engine(&self, engine: Engine) {
        if let Some(s) = self.slot(engine) {
            s.lock().core.reset();
        }
    }

    fn abort(&self, engine: Engine) {
        if let Some(a) = self.aborts.get(engine.index()) {
            a.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    fn engine_clock(&self, engine: Engine) -> Option<u64> {
        let c = self.clocks.get(engine.index())?.as_ref()?;
        Some(c.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn read_reg(&self, engine: Engine, reg: u32) -> u32 {
        self.slot(engine).map_or(0, |s| s.lock().core.read(reg))
    }

    fn write_reg(&self, engine: Engine, reg: u32, value: u32) {
        if let Some(s) = self.slot(engine) {
            s.lock().core.write(reg, value);
        }
    }
}
