//! The submission side of a vGPU: per engine a virtual execlist, a shadow context and the path
//! from an ELSP write to the scheduler and back.
//!
//! On the fourth ELSP dword the submission is validated, each element becomes a workload (guest
//! context read through the virtual GGTT, PPGTT shadowed and pinned, ring copied and scanned) and
//! is queued on the scheduler; the CSB gets its idle-to-active event. On the engine thread the
//! shadow context is built and run on the host, and each batch the ring starts is copied and
//! scanned when the engine reaches it (a fetch); on completion it is written back, the
//! PPGTT root handed back for unpinning, the CSB updated (registers and the guest's status page)
//! and the interrupts raised through the VMM's callback. A workload that fails the scan, hangs or
//! faults leaves the engine busy from the guest's view (a virtual hang the guest's hang check
//! sees); the guest recovers with an engine reset ([`VgpuEngines::reset_engines`]).
//!
//! The engine thread owns the running work, and neither side waits for the other's long work:
//!
//! - the shadow context is the engine thread's (a vCPU touches it only in a reset, once the
//!   engine has nothing of this vGPU running);
//! - the guest-visible execlist state (`EngineSide`) is held for register-sized updates only: an
//!   ELSP write latches under it, releases it for the scan (serialised per engine by a lock only
//!   vCPUs take), and takes it again to schedule the submission in;
//! - the GGTT is a read-write lock the engine thread only reads, with `read_recursive`, so it never
//!   queues behind a vCPU's GTT write waiting for a scan;
//! - the shadow page tables are changed by the vCPU side only: engine threads hand finished
//!   workloads' roots back through a short-held list the next submission unpins. A fetch takes
//!   them (then the GGTT, the order a submission takes them in) to read a PPGTT batch through
//!   them; what it can wait for is this vGPU's own table work, each piece bounded by
//!   `PpgttLimits` and the scan limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use vm_memory::{GuestAddress, GuestAddressSpace};

use crate::cmd::{AddrSpace, Events, FetchPoint, GmWindows, ScanLimits, ScanParams, ScannedWorkload};
use crate::context::{ShadowContext, ShadowPlan};
use crate::execlist::{
    create_workload, fetch_batch, CsbStatus, ExeclistError, VirtualExeclist, Workload, WorkloadError, WorkloadParams,
};
use crate::host::placement::{fetch_budget, FetchedBatches, Fetcher};
use crate::host::{HostGpu, HostJob, RunReport, VgpuMemory};
use crate::hw::{Engine, EngineMask, Gen};
use crate::mm::ppgtt::{PpgttLimits, Revalidate};
use crate::mm::{GgttError, HostGgtt, PpgttError, PpgttRoot, ShadowPpgtt, VirtualGgtt};
use crate::sched::{Job, JobError, RunControl, SchedError, Scheduler, VgpuId};

/// Errors of the submission side, each about one guest action.
#[derive(Debug, thiserror::Error)]
pub enum VgpuError {
    /// The ELSP submission was malformed.
    #[error("{engine} ELSP: {why}")]
    Execlist {
        /// Engine.
        engine: Engine,
        /// Why.
        why: ExeclistError,
    },
    /// A submitted context cannot run (scan or shadowing failure); the engine is now hung.
    #[error("{engine} workload rejected: {why}")]
    Rejected {
        /// Engine.
        engine: Engine,
        /// Why.
        why: WorkloadError,
    },
    /// The scheduler refused the workload.
    #[error(transparent)]
    Sched(#[from] SchedError),
    /// A GTT access failed.
    #[error(transparent)]
    Ggtt(#[from] GgttError),
    /// PPGTT setup failed.
    #[error(transparent)]
    Ppgtt(#[from] PpgttError),
    /// The host could not take the vGPU.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// The engine is not present.
    #[error("no {0} engine")]
    NoEngine(Engine),
}

/// What the VMM's interrupt callback is told: the engine, whether its context-switch interrupt
/// fired (new CSB events) and which user interrupts the completed workload raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineIrq {
    /// Engine.
    pub engine: Engine,
    /// New CSB events.
    pub context_switch: bool,
    /// Interrupts the workload's commands asked for.
    pub events: Events,
}

/// What a vGPU's submission side needs to know.
#[derive(Clone, Copy, Debug)]
pub struct VgpuConfig {
    /// Scheduler id.
    pub id: VgpuId,
    /// Generation.
    pub gen: Gen,
    /// Its GGTT windows.
    pub windows: GmWindows,
    /// Scan bounds per workload.
    pub limits: ScanLimits,
    /// Scheduling weight, 1..=16.
    pub weight: u8,
}

/// The vGPU's shadow page tables and host memory: taken only on the vCPU side (submissions,
/// g2v notifications, GTT writes, resets).
struct Tables {
    ppgtt: ShadowPpgtt,
    host: Box<dyn VgpuMemory>,
    writer: Box<dyn HostGgtt + Send>,
}

/// The guest-visible execlist state of one engine.
struct EngineSide {
    execlist: VirtualExeclist,
    /// GGTT address of the engine's status page (HWS_PGA), where CSB events are mirrored.
    hws_pga: Option<u64>,
    /// LRCA and tail of the last workload created (for lite restores).
    last: Option<(u64, u32)>,
    /// A workload failed: the guest sees the engine hung until it resets it.
    hung: bool,
    /// Set on the last queued job when a lite restore supersedes it: it completes without a
    /// CSB event (the guest sees one context that kept running).
    last_job: Option<Arc<AtomicBool>>,
}

/// One engine of the vGPU.
struct EngineSlot {
    /// Serialises the engine's ELSP submissions (scans included); only vCPUs take it.
    submit: Mutex<()>,
    /// The guest-visible state; held for register-sized updates on both sides.
    side: Mutex<EngineSide>,
    /// The shadow context: the engine thread's.
    shadow: Mutex<ShadowContext>,
}

type IrqFn = dyn Fn(EngineIrq) + Send + Sync;

struct Shared<A> {
    cfg: VgpuConfig,
    mem: A,
    /// The virtual GGTT: written by vCPUs (with `tables` held), read by scans and engine threads.
    ggtt: RwLock<VirtualGgtt>,
    tables: Mutex<Tables>,
    /// Roots of finished workloads, for the vCPU side to unpin (engine threads never take
    /// `tables`).
    unpins: Mutex<Vec<PpgttRoot>>,
    engines: Vec<Option<EngineSlot>>,
    sched: Arc<Scheduler>,
    irq: Box<IrqFn>,
}

/// The submission side of one vGPU. `A` is the guest's address space: each operation takes a
/// snapshot of the memory map (`A::memory()`), so a VMM may add and remove guest memory while the
/// vGPU lives.
pub struct VgpuEngines<A> {
    shared: Arc<Shared<A>>,
}

impl<A> std::fmt::Debug for VgpuEngines<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VgpuEngines").field("id", &self.shared.cfg.id).finish()
    }
}

impl<A> VgpuEngines<A>
where
    A: GuestAddressSpace + Send + Sync + 'static,
    A::M: Send + Sync,
{
    /// Creates the vGPU on the scheduler's GPU; `irq` is called on every interrupt it raises.
    pub fn new(
        cfg: VgpuConfig,
        mem: A,
        sched: Arc<Scheduler>,
        irq: impl Fn(EngineIrq) + Send + Sync + 'static,
    ) -> Result<Self, VgpuError> {
        let host_gpu = sched.host().clone();
        let mut host = host_gpu.attach_vgpu(Arc::new(SpaceDma(mem.clone())))?;
        let mut writer = host.ggtt_writer();
        let mut ggtt = VirtualGgtt::new(cfg.windows, host.scratch_page());
        ggtt.reset(&mut *host, &mut *writer);
        let ppgtt = ShadowPpgtt::new(&mut *host, PpgttLimits::default(), Box::new(Revalidate))?;
        sched.add_vgpu(cfg.id, cfg.weight)?;
        let engines = Engine::ALL
            .iter()
            .map(|&e| {
                host_gpu.engines().has(e).then(|| EngineSlot {
                    submit: Mutex::new(()),
                    side: Mutex::new(EngineSide {
                        execlist: VirtualExeclist::new(crate::context::context_size(cfg.gen, e)),
                        hws_pga: None,
                        last: None,
                        hung: false,
                        last_job: None,
                    }),
                    shadow: Mutex::new(ShadowContext::new(cfg.gen, e, sched.clean_context(e))),
                })
            })
            .collect();
        let shared = Shared {
            cfg,
            mem,
            ggtt: RwLock::new(ggtt),
            tables: Mutex::new(Tables { ppgtt, host, writer }),
            unpins: Mutex::new(Vec::new()),
            engines,
            sched,
            irq: Box::new(irq),
        };
        Ok(VgpuEngines { shared: Arc::new(shared) })
    }

    fn slot(&self, engine: Engine) -> Result<&EngineSlot, VgpuError> {
        self.shared.engines.get(engine.index()).and_then(Option::as_ref).ok_or(VgpuError::NoEngine(engine))
    }

    /// A guest write of `size` bytes to the GTT part of BAR0 at `offset`.
    pub fn write_gtt(&self, offset: u64, size: usize, value: u64) -> Result<(), VgpuError> {
        let mut t = self.shared.tables.lock();
        let Tables { host, writer, .. } = &mut *t;
        let mut ggtt = self.shared.ggtt.write();
        Ok(ggtt.write(&*self.shared.mem.memory(), &mut **host, &mut **writer, offset, size, value)?)
    }

    /// The guest programmed the engine's status page address (HWS_PGA).
    pub fn set_hws_pga(&self, engine: Engine, gma: u64) -> Result<(), VgpuError> {
        self.slot(engine)?.side.lock().hws_pga = Some(gma);
        Ok(())
    }

    /// Reads an execlist register (offset relative to the engine base).
    pub fn read_execlist(&self, engine: Engine, off: u32) -> Option<u32> {
        self.slot(engine).ok()?.side.lock().execlist.read(off)
    }

    /// A guest write to the CSB pointer register.
    pub fn write_csb_ptr(&self, engine: Engine, value: u32) -> Result<(), VgpuError> {
        self.slot(engine)?.side.lock().execlist.write_csb_ptr(value);
        Ok(())
    }

    /// A guest write to an engine's ELSP.
    pub fn write_elsp(&self, engine: Engine, value: u32) -> Result<(), VgpuError> {
        let s = &self.shared;
        let slot = self.slot(engine)?;
        // One submission at a time per engine, while the engine thread goes on completing work.
        let _submitting = slot.submit.lock();
        let (sub, last) = {
            let mut es = slot.side.lock();
            let sub = match es.execlist.write_elsp(value, &s.cfg.windows) {
                Ok(Some(sub)) => sub,
                Ok(None) => return Ok(()),
                Err(why) => return Err(VgpuError::Execlist { engine, why }),
            };
            if es.hung {
                // A hung engine still latches submissions as the hardware does: the hung element
                // never completes, so nothing new runs, but a lite restore of the hung context is
                // acknowledged (i915 waits for that acknowledgement before it considers the
                // submission in flight). Everything is dropped when the guest resets the engine.
                s.sched.record_rejection(s.cfg.id, "engine hung: submission before reset");
                let switch = es.execlist.schedule_in(&sub).map_err(|why| VgpuError::Execlist { engine, why })?;
                s.publish(&mut es, engine, switch.interrupt, Events::empty());
                return Ok(());
            }
            (sub, es.last)
        };
        // Workloads for both elements first, with the execlist state free for the engine thread:
        // a rejected element runs nothing of the submission.
        let mut works = Vec::with_capacity(2);
        let mut last = last;
        for desc in sub.elements.into_iter().flatten() {
            let resume_head = last.and_then(|(lrca, tail)| (lrca == desc.lrca()).then_some(tail));
            let p =
                WorkloadParams { gen: s.cfg.gen, engine, windows: s.cfg.windows, limits: s.cfg.limits, resume_head };
            let created = {
                let mut t = s.tables.lock();
                let Tables { ppgtt, host, .. } = &mut *t;
                s.drain_unpins(ppgtt, &mut **host);
                let ggtt = s.ggtt.read();
                create_workload(&*s.mem.memory(), &*ggtt, ppgtt, &mut **host, desc, &p)
            };
            match created {
                Ok(w) => {
                    last = Some((desc.lrca(), w.guest.ring.ring.tail));
                    works.push(w);
                }
                Err(why) => {
                    let mut t = s.tables.lock();
                    let Tables { ppgtt, host, .. } = &mut *t;
                    for w in works {
                        let _ = ppgtt.unpin(&mut **host, w.root);
                    }
                    s.sched.record_rejection(s.cfg.id, reason_class(&why));
                    slot.side.lock().hung = true;
                    return Err(VgpuError::Rejected { engine, why });
                }
            }
        }
        let scanned =
            works.iter().map(|w| w.ring.stats.bytes_copied + w.wa.as_ref().map_or(0, |x| x.stats.bytes_copied)).sum();
        s.sched.record_scanned(s.cfg.id, scanned);
        for w in &works {
            s.sched.record_dropped(s.cfg.id, &w.ring);
        }
        let flags: Vec<Arc<AtomicBool>> = works.iter().map(|_| Arc::new(AtomicBool::new(false))).collect();
        {
            let mut es = slot.side.lock();
            let switch = es.execlist.schedule_in(&sub).map_err(|why| VgpuError::Execlist { engine, why })?;
            if switch.events.iter().any(|e| e.status.contains(CsbStatus::LITE_RESTORE)) {
                if let Some(prev) = &es.last_job {
                    prev.store(true, Ordering::Release);
                }
            }
            es.last = last;
            es.last_job = flags.last().cloned();
            s.publish(&mut es, engine, switch.interrupt, Events::empty());
        }
        for (w, superseded) in works.into_iter().zip(flags) {
            let job = Box::new(VgpuJob {
                shared: self.shared.clone(),
                engine,
                work: Some(w),
                superseded,
                started: false,
                fetched: FetchedBatches::default(),
            });
            s.sched.submit(s.cfg.id, engine, job)?;
        }
        Ok(())
    }

    /// Guest engine reset (GDRST) or device reset: drops queued work, waits for running work,
    /// and returns the engines' execlists to their reset state.
    pub fn reset_engines(&self, engines: EngineMask) -> Result<(), VgpuError> {
        let s = &self.shared;
        s.sched.reset_queue(s.cfg.id, engines)?;
        for e in Engine::ALL.into_iter().filter(|e| engines.has(*e)) {
            if let Ok(slot) = self.slot(e) {
                let _submitting = slot.submit.lock();
                // Nothing of this vGPU runs or waits on the engine now: the shadow is free.
                slot.shadow.lock().invalidate();
                let mut es = slot.side.lock();
                es.execlist.reset();
                es.last = None;
                es.last_job = None;
                es.hung = false;
            }
        }
        Ok(())
    }

    /// Waits until nothing of this vGPU is queued or running.
    pub fn wait_idle(&self) {
        self.shared.sched.wait_idle(self.shared.cfg.id);
    }

    /// The scheduler's statistics of this vGPU.
    pub fn stats(&self) -> Option<crate::sched::VgpuStats> {
        self.shared.sched.stats(self.shared.cfg.id)
    }

    /// The scheduler id.
    pub fn id(&self) -> VgpuId {
        self.shared.cfg.id
    }

    /// The guest's address space.
    pub fn memory(&self) -> &A {
        &self.shared.mem
    }

    /// A guest read of `size` bytes (4 or 8) from the GTT part of BAR0 at `offset`: what the guest
    /// wrote there.
    pub fn read_gtt(&self, offset: u64, size: usize) -> Result<u64, VgpuError> {
        Ok(self.shared.ggtt.read().read(offset, size)?)
    }

    /// The guest physical address behind graphics address `gma` in the vGPU's GGTT.
    pub fn translate_ggtt(&self, gma: u64) -> Option<GuestAddress> {
        use crate::cmd::GmTranslate;
        self.shared.ggtt.read().translate(AddrSpace::Ggtt, gma)
    }

    /// The guest announced (PVINFO g2v) a PPGTT it created: shadow it now.
    pub fn ppgtt_created(&self, root: PpgttRoot) -> Result<(), VgpuError> {
        let s = &self.shared;
        let mut t = s.tables.lock();
        let Tables { ppgtt, host, .. } = &mut *t;
        s.drain_unpins(ppgtt, &mut **host);
        Ok(ppgtt.notify_create(&*s.mem.memory(), &mut **host, root)?)
    }

    /// The guest announced (PVINFO g2v) it destroys a PPGTT.
    pub fn ppgtt_destroyed(&self, root: PpgttRoot) {
        let s = &self.shared;
        let mut t = s.tables.lock();
        let Tables { ppgtt, host, .. } = &mut *t;
        s.drain_unpins(ppgtt, &mut **host);
        ppgtt.notify_destroy(&mut **host, root);
    }

    /// Device-level reset (VM reboot, FLR): engines reset, every shadow page table dropped and
    /// every GGTT entry pointed back at the scratch page.
    pub fn reset_device(&self) -> Result<(), VgpuError> {
        self.reset_engines(self.shared.sched.host().engines())?;
        self.shared.clear_memory();
        for slot in self.shared.engines.iter().flatten() {
            slot.side.lock().hws_pga = None;
        }
        Ok(())
    }
}

/// A guest address space as the host GPU reaches it: every access takes the current memory map.
struct SpaceDma<A>(A);

impl<A> crate::host::GuestDma for SpaceDma<A>
where
    A: GuestAddressSpace + Send + Sync,
    A::M: Send + Sync,
{
    fn dma_read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.0.memory().dma_read(gpa, buf)
    }

    fn dma_write(&self, gpa: u64, data: &[u8]) -> bool {
        self.0.memory().dma_write(gpa, data)
    }

    fn dma_contains(&self, gpa: u64, len: u64) -> bool {
        self.0.memory().dma_contains(gpa, len)
    }

    fn host_regions(&self) -> Vec<(u64, u64, u64)> {
        self.0.memory().host_regions()
    }
}

impl<A> Drop for VgpuEngines<A> {
    /// Leaves the scheduler (queued work cancelled, running work finished), then points the
    /// vGPU's GGTT windows back at the scratch page and drops its shadow page tables, so nothing
    /// of this guest stays reachable through the host GGTT once its windows are reused.
    fn drop(&mut self) {
        let _ = self.shared.sched.remove_vgpu(self.shared.cfg.id);
        self.shared.clear_memory();
    }
}

fn reason_class(e: &WorkloadError) -> &'static str {
    match e {
        WorkloadError::Descriptor(_) => "descriptor",
        WorkloadError::Context(_) => "context image",
        WorkloadError::Ppgtt(_) => "page tables",
        WorkloadError::Ring(_) => "command scan",
        WorkloadError::WaBatch(_) => "workaround batch",
        WorkloadError::RootLoad { .. } => "page-table root load",
    }
}

impl<A: GuestAddressSpace> Shared<A> {
    /// Mirrors the CSB into the guest's status page and raises the interrupt.
    fn publish(&self, es: &mut EngineSide, engine: Engine, context_switch: bool, events: Events) {
        if let Some(hws) = es.hws_pga {
            let ggtt = self.ggtt.read_recursive();
            es.execlist.mirror_to_hwsp(&*self.mem.memory(), &*ggtt, hws, &self.cfg.windows);
        }
        if context_switch || !events.is_empty() {
            (self.irq)(EngineIrq { engine, context_switch, events });
        }
    }

    /// Unpins the roots engine threads handed back.
    fn drain_unpins(&self, ppgtt: &mut ShadowPpgtt, host: &mut dyn VgpuMemory) {
        let roots = std::mem::take(&mut *self.unpins.lock());
        for root in roots {
            let _ = ppgtt.unpin(host, root);
        }
    }
}

impl<A> Shared<A> {
    /// Every shadow page table dropped, every GGTT entry back at the scratch page.
    fn clear_memory(&self) {
        let mut t = self.tables.lock();
        let Tables { ppgtt, host, writer } = &mut *t;
        self.unpins.lock().clear();
        ppgtt.clear(&mut **host);
        self.ggtt.write().reset(&mut **host, &mut **writer);
    }
}

struct VgpuJob<A> {
    shared: Arc<Shared<A>>,
    engine: Engine,
    work: Option<Workload>,
    superseded: Arc<AtomicBool>,
    /// The shadow context was built: a later run resumes a preempted one.
    started: bool,
    /// The batches fetched so far and still placed (a preempted run resumes in them).
    fetched: FetchedBatches,
}

impl<A> Job for VgpuJob<A>
where
    A: GuestAddressSpace + Send + Sync,
    A::M: Send + Sync,
{
    fn execute(&mut self, host: &dyn HostGpu, engine: Engine, run: &RunControl<'_>) -> Result<RunReport, JobError> {
        let t0 = std::time::Instant::now();
        let s = &self.shared;
        let w = self.work.as_mut().ok_or(JobError::Prepare("no workload".into()))?;
        let slot = s.engines.get(engine.index()).and_then(Option::as_ref).ok_or(JobError::Prepare("engine".into()))?;
        let mut shadow = slot.shadow.lock();
        if !self.started {
            let l = host.layout(engine);
            let plan = ShadowPlan {
                ring_start: l.ring_start,
                ring_size: l.ring_size,
                head: 0,
                tail: w.ring.ring.len_bytes() as u32,
                root: w.shadow_root,
                indirect_ctx: w.guest.indirect_ctx.map(|_| l.indirect_ctx),
                bb_per_ctx: w.guest.bb_per_ctx.map(|_| l.bb_per_ctx),
            };
            let scan = ScanParams {
                gen: s.cfg.gen,
                engine,
                windows: s.cfg.windows,
                ring: w.guest.ring.ring,
                surfaces: AddrSpace::Ppgtt,
                hwsp: Some(w.guest.lrca),
                limits: s.cfg.limits,
            };
            // The context image is read through the GGTT; its scan follows no PPGTT address (the
            // virtual GGTT translates none).
            let ggtt = s.ggtt.read_recursive();
            shadow
                .populate(&*s.mem.memory(), &*ggtt, &w.guest, &plan, &scan)
                .map_err(|e| JobError::Prepare(e.to_string()))?;
            self.started = true;
        }
        // A preempted run left the engine's own save in the shadow: running it again resumes.
        let legacy32 = matches!(w.root, crate::mm::PpgttRoot::L3(_));
        let Workload { guest, root, shadow_root, ring, wa, .. } = w;
        let (root, shadow_root) = (*root, *shadow_root);
        let p =
            WorkloadParams { gen: s.cfg.gen, engine, windows: s.cfg.windows, limits: s.cfg.limits, resume_head: None };
        // Each batch the ring starts is copied and scanned when the engine reaches it. The
        // tables are taken as a submission takes them (tables, then the GGTT); only this vGPU's
        // own table updates can hold them, each bounded.
        let fetch_wall = std::cell::Cell::new(0u64);
        let mut fetch = |point: &FetchPoint| -> Result<ScannedWorkload, String> {
            let f0 = std::time::Instant::now();
            let _charge = Defer(|| fetch_wall.set(fetch_wall.get().saturating_add(nanos_since(f0))));
            // One fetch's scan may copy no more than its fetch region holds.
            let mut p = p;
            p.limits.max_bytes = p.limits.max_bytes.min(fetch_budget(point.level));
            let fetched = {
                let t = s.tables.lock();
                let ggtt = s.ggtt.read_recursive();
                fetch_batch(&*s.mem.memory(), &*ggtt, &t.ppgtt, root, shadow_root, guest, &p, point)
            };
            match fetched {
                Ok(tree) => {
                    s.sched.record_scanned(s.cfg.id, tree.stats.bytes_copied);
                    s.sched.record_dropped(s.cfg.id, &tree);
                    Ok(tree)
                }
                Err(why) => {
                    s.sched.record_rejection(s.cfg.id, reason_class(&why));
                    Err(why.to_string())
                }
            }
        };
        let mut job = HostJob::new(ring, wa.as_mut(), &mut shadow, legacy32);
        job.preempt = Some(run.preempt);
        job.timeout_ns = run.timeout_ns;
        job.fetcher = Some(Fetcher { fetch: &mut fetch, live: &mut self.fetched });
        let r0 = std::time::Instant::now();
        let mut report = host.run(engine, job)?;
        let backend = nanos_since(r0).saturating_sub(fetch_wall.get());
        if !report.preempted {
            let ggtt = s.ggtt.read_recursive();
            shadow.write_back(&*s.mem.memory(), &*ggtt, guest).map_err(|e| JobError::Prepare(e.to_string()))?;
        }
        report.mediation_ns = nanos_since(t0).saturating_sub(backend);
        Ok(report)
    }

    fn complete(mut self: Box<Self>, result: Result<RunReport, JobError>) {
        let s = &self.shared;
        let Some(w) = self.work.take() else { return };
        s.unpins.lock().push(w.root);
        let events = w.ring.events | self.fetched.events;
        let Some(slot) = s.engines.get(self.engine.index()).and_then(Option::as_ref) else { return };
        let mut es = slot.side.lock();
        match result {
            // A lite restore replaced this submission: the context keeps running; its user
            // interrupts still fire.
            Ok(_) if self.superseded.load(Ordering::Acquire) => s.publish(&mut es, self.engine, false, events),
            Ok(_) => match es.execlist.schedule_out() {
                Ok(switch) => s.publish(&mut es, self.engine, switch.interrupt, events),
                Err(_) => es.hung = true,
            },
            // Cancelled by a reset: nothing to tell the guest. Failed: the engine stays busy.
            Err(JobError::Cancelled(_)) => {}
            Err(_) => es.hung = true,
        }
    }
}

fn nanos_since(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs its closure when dropped (on every way out of a scope).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
