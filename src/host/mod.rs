//! The physical GPU behind the vGPUs: the [`HostGpu`] trait the scheduler drives, and its
//! backends, [`sim`] (the software reference GPU) and `vfio` (a real iGPU through VFIO, feature
//! `vfio`).
//!
//! A backend runs one shadow workload at a time per engine: it places the shadow ring, batches
//! and workaround batches in the host's part of the GGTT, loads the shadow context, executes, lets
//! the engine save its state back into the shadow context, and reports the engine time the
//! workload took, or the hang or fault that stopped it. The scheduler resets a hung engine with
//! [`HostGpu::reset_engine`]. Each vGPU gets a [`VgpuMemory`] from [`HostGpu::attach_vgpu`]: the
//! DMA mapper, shadow page-table memory and host GGTT writer its memory managers use.

pub mod placement;
pub mod sim;
#[cfg(feature = "vfio")]
pub mod vfio;

use std::sync::Arc;

use crate::cmd::ScannedWorkload;
use crate::context::ShadowContext;
use crate::hw::{Engine, EngineMask, Gen};
use crate::mm::{DmaMapper, HostGgtt, ShadowMemory};

pub use sim::memory::GuestDma;

/// Where a backend puts an engine's shadow buffers in the host GGTT: the fixed parts a shadow
/// context points at ([`ShadowPlan`](crate::context::ShadowPlan) takes these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLayout {
    /// GGTT address of the shadow ring (4 KiB aligned, below 4 GiB).
    pub ring_start: u64,
    /// Its size in bytes (the largest ring a guest may have: 2 MiB).
    pub ring_size: u32,
    /// GGTT address of the shadow indirect-context batch.
    pub indirect_ctx: u64,
    /// GGTT address of the shadow per-context batch.
    pub bb_per_ctx: u64,
    /// Bytes available there.
    pub bb_per_ctx_size: u64,
}

/// One shadow workload for [`HostGpu::run`]. The backend relocates the batch starts of `ring` and
/// `wa` to where it places the shadow batches, and saves the engine state into `context`.
pub struct HostJob<'a> {
    /// The scanned ring and its batches; the ring runs from the start of the shadow ring.
    pub ring: &'a mut ScannedWorkload,
    /// The scanned workaround stream (render): the indirect-context batch followed by a start of
    /// the per-context batch.
    pub wa: Option<&'a mut ScannedWorkload>,
    /// The populated shadow context.
    pub context: &'a mut ShadowContext,
    /// The context uses a legacy 3-level PPGTT (four PDPs) instead of a PML4.
    pub legacy32: bool,
    /// Asked at each preemption point with the engine time this run has used so far: true stops
    /// the workload there (`RunReport::preempted`); its context then holds what the engine saved,
    /// and running the same job again resumes it. `None`: run to completion.
    pub preempt: Option<&'a dyn Fn(u64) -> bool>,
    /// Engine time after which the run is a hang (`None`: the backend's own limit).
    pub timeout_ns: Option<u64>,
    /// Copies and scans the batches `ring.fetches` start when the engine reaches them (required
    /// when there are any); see [`placement`].
    pub fetcher: Option<placement::Fetcher<'a>>,
}

impl std::fmt::Debug for HostJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostJob")
            .field("ring_bytes", &self.ring.total_bytes())
            .field("legacy32", &self.legacy32)
            .field("preemptible", &self.preempt.is_some())
            .field("timeout_ns", &self.timeout_ns)
            .field("fetches", &self.ring.fetches.len())
            .finish()
    }
}

impl<'a> HostJob<'a> {
    /// A job that runs to completion within the backend's own hang limit.
    pub fn new(
        ring: &'a mut ScannedWorkload,
        wa: Option<&'a mut ScannedWorkload>,
        context: &'a mut ShadowContext,
        legacy32: bool,
    ) -> Self {
        HostJob { ring, wa, context, legacy32, preempt: None, timeout_ns: None, fetcher: None }
    }
}

/// What a completed workload cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Engine time, ns (context restore, commands, save).
    pub engine_ns: u64,
    /// Commands executed (MI_NOOP runs included).
    pub commands: u64,
    /// Bytes moved by blits and memory-to-memory copies.
    pub bytes_moved: u64,
    /// MI_USER_INTERRUPTs and notify flushes the engine raised.
    pub interrupts: u32,
    /// Blits consumed without effect (tiled or legacy layouts the backend does not model).
    pub skipped_blits: u32,
    /// The run stopped at a preemption point before completing (see [`HostJob::preempt`]).
    pub preempted: bool,
    /// Batches fetched when the engine reached them (see [`placement`]).
    pub fetches: u32,
    /// Wall time of the run that was the job's own mediation work, not the backend's (a job sets
    /// it: its shadow context build and write-back, and the copies and scans of the batches it
    /// fetched during the run), ns. The scheduler's `host_wall_ns` leaves it out.
    pub mediation_ns: u64,
    /// Commands a non-privileged batch may not execute (privileged commands, loads of registers
    /// it may not write, global-GTT stores), turned into MI_NOOP by the engine as the hardware
    /// turns them.
    pub privilege_violations: u32,
}

/// Why the host engine did not complete a workload. The vGPU sees every one as a hang of its
/// engine; the scheduler resets the physical engine after `Hang` and `Fault`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The workload ran past the hang timeout (a loop, a semaphore that never signals).
    #[error("{engine} hung after {engine_ns} ns of engine time at {at:#x}: {why}")]
    Hang {
        /// Engine.
        engine: Engine,
        /// Engine time spent.
        engine_ns: u64,
        /// GGTT address of the command executing.
        at: u64,
        /// What it was doing.
        why: &'static str,
    },
    /// The engine faulted (an unmapped address, a command it cannot execute).
    #[error("{engine} faulted at {at:#x}: {why}")]
    Fault {
        /// Engine.
        engine: Engine,
        /// GGTT address of the command.
        at: u64,
        /// Why.
        why: String,
    },
    /// A batch the engine reached was refused when it was fetched (copied and scanned): the
    /// engine stopped there, as a hardware engine hangs on a bad command.
    #[error("{engine}: batch refused when the engine reached it: {why}")]
    Refused {
        /// Engine.
        engine: Engine,
        /// Engine time the run used until then.
        engine_ns: u64,
        /// Where and why.
        why: String,
    },
    /// The run was stopped by [`HostGpu::abort`] (the guest reset the engine).
    #[error("{engine}: stopped by an engine reset")]
    Aborted {
        /// Engine.
        engine: Engine,
    },
    /// The workload does not fit the host's shadow areas.
    #[error("{engine}: cannot place the workload: {why}")]
    Placement {
        /// Engine.
        engine: Engine,
        /// Why.
        why: String,
    },
    /// The GPU has no such engine.
    #[error("the GPU has no {0} engine")]
    NoEngine(Engine),
    /// No more vGPUs can be attached.
    #[error("cannot attach another vGPU: {0}")]
    Attach(String),
}

/// The host side of one vGPU's memory: guest pages mapped for the GPU and shadow page-table
/// pages. Dropping it releases everything it holds.
pub trait VgpuMemory: DmaMapper + ShadowMemory + Send + std::fmt::Debug {
    /// A host page the vGPU's invalid GGTT entries point at.
    fn scratch_page(&self) -> u64;
    /// A writer of the host GGTT for the vGPU's virtual GGTT.
    fn ggtt_writer(&self) -> Box<dyn HostGgtt + Send>;
}

/// A physical Gen8/Gen9 GPU as the scheduler uses it. Every method may be called from any
/// thread; [`HostGpu::run`] is called by one thread per engine.
pub trait HostGpu: Send + Sync + std::fmt::Debug {
    /// Generation.
    fn gen(&self) -> Gen;
    /// Engines present.
    fn engines(&self) -> EngineMask;
    /// Where the shadow buffers of `engine` go.
    fn layout(&self, engine: Engine) -> EngineLayout;
    /// Attaches a vGPU's guest memory; the result is its host memory manager.
    fn attach_vgpu(&self, guest: Arc<dyn GuestDma>) -> Result<Box<dyn VgpuMemory>, HostError>;
    /// Runs one workload on `engine` to completion (blocking), or reports why it did not finish.
    fn run(&self, engine: Engine, job: HostJob<'_>) -> Result<RunReport, HostError>;
    /// Resets `engine` after a hang or fault.
    fn reset_engine(&self, engine: Engine);
    /// Stops the workload running on `engine`, at its next command, as an engine reset stops the
    /// hardware's: the run returns [`HostError::Aborted`]. A run that starts later is not
    /// affected. Backends that cannot stop a run let it end at its hang timeout.
    fn abort(&self, _engine: Engine) {}
    /// The engine's clock (engine time it has been busy, ns), readable while it runs, if the
    /// backend keeps one; the scheduler measures latencies in engine time with it.
    fn engine_clock(&self, _engine: Engine) -> Option<u64> {
        None
    }
    /// Reads an engine register (absolute MMIO offset), for the engine-state switch.
    fn read_reg(&self, engine: Engine, reg: u32) -> u32;
    /// Writes an engine register.
    fn write_reg(&self, engine: Engine, reg: u32, value: u32);
}

/// Records the host's clean engine context of `engine` the way i915 records its default context
/// state: a context with restore inhibit set and an empty ring runs on the engine, and what the
/// engine saved into its engine context is the result (dwords from 0x50 of the register-state
/// page to the end of the image). Shadow contexts load it in place of the engine context of a
/// guest context that has restore inhibit set. Call it while nothing else runs on the engine.
pub fn record_clean_context(host: &dyn HostGpu, engine: Engine) -> Result<Vec<u32>, HostError> {
    let layout = host.layout(engine);
    let mut context = ShadowContext::with_blank_clean(host.gen(), engine);
    context.prepare_recording(layout.ring_start, layout.ring_size);
    let mut ring = ScannedWorkload::host_ring(Vec::new());
    host.run(engine, HostJob::new(&mut ring, None, &mut context, false))?;
    Ok(context.parts().1.to_vec())
}
