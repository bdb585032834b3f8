//! Per-engine workload scheduling: one thread per physical engine, a queue per vGPU on each
//! engine, the weighted time-slice [`policy`], the engine register switch when an engine changes
//! owner, completion in order, hang containment and per-vGPU statistics.
//!
//! A [`Job`] is one workload as the vGPU prepared it: the engine thread calls [`Job::execute`]
//! (which builds the shadow context and runs it on the [`HostGpu`]) and then [`Job::complete`]
//! (write-back, CSB, interrupts). Jobs of one vGPU on one engine run and complete in submission
//! order. A job that hangs or faults resets the physical engine, fails the rest of that vGPU's
//! queue on that engine and closes the queue until [`Scheduler::reset_queue`] (the guest's engine
//! reset); other vGPUs' queues are untouched.
//!
//! Lock order: an engine's state lock, then a vGPU's statistics lock. No scheduler lock is held
//! while a job executes or completes, so jobs may take the vGPU's own locks freely, and the vGPU
//! may call into the scheduler while holding them.
//!
//! ```
//! use std::sync::Arc;
//! use shadowgpu::host::sim::{SimConfig, SimGpu};
//! use shadowgpu::sched::{SchedConfig, Scheduler};
//!
//! let sched = Scheduler::new(Arc::new(SimGpu::new(SimConfig::default())), SchedConfig::default());
//! sched.add_vgpu(1, 4).unwrap();
//! sched.add_vgpu(2, 8).unwrap();
//! assert_eq!(sched.stats(1).unwrap().completed, 0);
//! ```

pub mod policy;
pub mod regs;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::host::{HostError, HostGpu, RunReport};
use crate::hw::Engine;
pub use policy::{PolicyConfig, VgpuId};
use regs::SwitchedReg;
pub use stats::VgpuStats;

/// Most jobs queued per vGPU per engine.
pub const MAX_QUEUED: usize = 1024;

/// Why the scheduler refused something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// No vGPU with this id.
    #[error("no vGPU {0}")]
    UnknownVgpu(VgpuId),
    /// The id is taken.
    #[error("vGPU {0} exists")]
    Exists(VgpuId),
    /// The weight is outside 1..=16.
    #[error("weight {0} is outside 1..=16")]
    BadWeight(u8),
    /// The GPU has no such engine.
    #[error("the GPU has no {0} engine")]
    NoEngine(Engine),
    /// An earlier workload of this vGPU hung on this engine; the guest must reset the engine.
    #[error("vGPU {vgpu}'s {engine} queue is hung until the engine is reset")]
    QueueHung {
        /// vGPU.
        vgpu: VgpuId,
        /// Engine.
        engine: Engine,
    },
    /// Too many jobs queued.
    #[error("vGPU {0}'s queue is full")]
    QueueFull(VgpuId),
    /// The scheduler is shutting down.
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}

/// Why a job did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The host engine hung or faulted running it.
    #[error(transparent)]
    Host(#[from] HostError),
    /// It could not be prepared (shadow context construction failed).
    #[error("prepare: {0}")]
    Prepare(String),
    /// An earlier job of the vGPU on this engine failed, or the queue was reset.
    #[error("cancelled: {0}")]
    Cancelled(&'static str),
    /// The scheduler refused it.
    #[error(transparent)]
    Rejected(#[from] SchedError),
}

/// What the engine thread hands a job it runs.
pub struct RunControl<'a> {
    /// The scheduler's preemption request (see [`HostJob::preempt`](crate::host::HostJob)): asked
    /// at each preemption point with the engine time the run has used.
    pub preempt: &'a dyn Fn(u64) -> bool,
    /// The hang timeout, engine time (`None`: the backend's own).
    pub timeout_ns: Option<u64>,
}

/// One workload of one vGPU, as the scheduler runs it.
pub trait Job: Send {
    /// Runs the workload on `engine` of `host` (on the engine's thread). A run that reports
    /// [`RunReport::preempted`] is put back at the front of its vGPU's queue and executed again
    /// later, to resume where the engine stopped.
    fn execute(&mut self, host: &dyn HostGpu, engine: Engine, run: &RunControl<'_>) -> Result<RunReport, JobError>;
    /// Completion: called once, in submission order, whatever happened.
    fn complete(self: Box<Self>, result: Result<RunReport, JobError>);
}

/// Scheduler parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedConfig {
    /// Policy parameters (the time slice among them).
    pub policy: PolicyConfig,
    /// Engine time a workload may run in one go (without being preempted) before it counts as
    /// hung (`None`: the backend's own limit, 50 ms on the software GPU).
    pub hang_timeout_ns: Option<u64>,
    /// Preempt a workload past its vGPU's slice when another vGPU waits (default on; off, a
    /// workload runs until it ends or hangs, as under GVT-g).
    pub preemption: bool,
}

impl Default for SchedConfig {
    /// 1 ms slices in 100 ms balance periods, the backend's hang timeout, preemption on.
    fn default() -> Self {
        SchedConfig { policy: PolicyConfig::default(), hang_timeout_ns: None, preemption: true }
    }
}

/// Per-engine counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Jobs run.
    pub jobs: u64,
    /// Engine time used, ns.
    pub busy_ns: u64,
    /// Owner changes (engine register switches).
    pub switches: u64,
    /// Hangs and faults (each reset the engine).
    pub resets: u64,
    /// Workloads preempted at the end of their vGPU's time slice.
    pub preemptions: u64,
}

struct Queued {
    job: Box<dyn Job>,
    at: Instant,
    /// The engine's busy time when it was queued, for engine-time latency.
    engine_at: u64,
}

#[derive(Default)]
struct VgpuQueue {
    jobs: VecDeque<Queued>,
    hung: bool,
    /// The guest is resetting the engine: its running job stops at its next preemption point,
    /// and nothing of it is picked until the reset is done.
    resetting: bool,
    /// Saved values of the switched registers (host defaults until the vGPU first runs).
    saved: Vec<u32>,
}

struct EngineState {
    queues: HashMap<VgpuId, VgpuQueue>,
    policy: policy::Policy,
    running: Option<VgpuId>,
    /// Whose switched registers are on the engine (None: the host's).
    owner: Option<VgpuId>,
    host_values: Vec<u32>,
    stats: EngineStats,
    shutdown: bool,
    /// Engine occupancy record, when tracing.
    trace: Option<Vec<Slice>>,
}

/// One job's stretch of engine time, for occupancy timelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Whose job.
    pub vgpu: VgpuId,
    /// Engine-time clock of the engine when it started (sum of earlier jobs' engine time), ns.
    pub start_ns: u64,
    /// Engine time it took, ns.
    pub engine_ns: u64,
}

/// Most slices kept per engine while tracing.
pub const MAX_TRACE: usize = 1 << 20;

struct EngineSched {
    engine: Engine,
    /// The engine's clean engine context, recorded at start (see [`Scheduler::clean_context`]).
    clean: Arc<[u32]>,
    list: Vec<SwitchedReg>,
    state: Mutex<EngineState>,
    cv: Condvar,
    /// Bumped on every submission, so an idle engine thread can spin briefly before sleeping.
    submissions: AtomicU64,
    /// Resets in progress on this engine (a cheap check at every preemption point).
    resets: AtomicUsize,
}

/// How long an idle engine thread watches for new work before it sleeps: a guest that submits
/// again right after a completion (the common case) then costs no thread wake-up.
const IDLE_SPIN: Duration = Duration::from_micros(50);

struct Inner {
    host: Arc<dyn HostGpu>,
    cfg: SchedConfig,
    engines: Vec<EngineSched>,
    vgpus: RwLock<HashMap<VgpuId, Arc<Mutex<VgpuStats>>>>,
}

/// The scheduler of one physical GPU.
pub struct Scheduler {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("engines", &self.inner.engines.len()).finish()
    }
}

fn masked_value(r: &SwitchedReg, v: u32) -> u32 {
    if r.masked {
        v & 0xffff
    } else {
        v
    }
}

impl Scheduler {
    /// Starts one thread per engine of `host`.
    pub fn new(host: Arc<dyn HostGpu>, cfg: SchedConfig) -> Self {
        let gen = host.gen();
        let engines: Vec<EngineSched> = Engine::ALL
            .into_iter()
            .filter(|&e| host.engines().has(e))
            .map(|engine| {
                // Recorded before any vGPU exists and before the engine's thread starts. A backend
                // that cannot run it leaves the blank layout (every listed register loaded with 0).
                let clean = crate::host::record_clean_context(&*host, engine)
                    .unwrap_or_else(|_| crate::context::shadow::blank_engine_context(gen, engine))
                    .into();
                let list = regs::switched(gen, engine);
                let host_values = list.iter().map(|r| masked_value(r, host.read_reg(engine, r.reg))).collect();
                EngineSched {
                    engine,
                    clean,
                    list,
                    state: Mutex::new(EngineState {
                        queues: HashMap::new(),
                        policy: policy::Policy::new(PolicyConfig {
                            max_run_ns: cfg.hang_timeout_ns.unwrap_or(cfg.policy.max_run_ns),
                            ..cfg.policy
                        }),
                        running: None,
                        owner: None,
                        host_values,
                        stats: EngineStats::default(),
                        shutdown: false,
                        trace: None,
                    }),
                    cv: Condvar::new(),
                    submissions: AtomicU64::new(0),
                    resets: AtomicUsize::new(0),
                }
            })
            .collect();
        let inner = Arc::new(Inner { host, cfg, engines, vgpus: RwLock::new(HashMap::new()) });
        let threads = (0..inner.engines.len())
            .filter_map(|i| {
                let inner = inner.clone();
                let name = format!("sgpu-{}", inner.engines.get(i).map_or("?", |e| e.engine.name()));
                std::thread::Builder::new().name(name).spawn(move || engine_loop(&inner, i)).ok()
            })
            .collect();
        Scheduler { inner, threads }
    }

    /// The host GPU.
    pub fn host(&self) -> &Arc<dyn HostGpu> {
        &self.inner.host
    }

    /// The clean engine context of `engine`, recorded on the host when the scheduler started
    /// ([`record_clean_context`](crate::host::record_clean_context)): what shadow contexts load
    /// for guest contexts with restore inhibit set. The blank layout for an engine the GPU lacks.
    pub fn clean_context(&self, engine: Engine) -> Arc<[u32]> {
        match self.engine(engine) {
            Ok(e) => e.clean.clone(),
            Err(_) => crate::context::shadow::blank_engine_context(self.inner.host.gen(), engine).into(),
        }
    }

    fn engine(&self, engine: Engine) -> Result<&EngineSched, SchedError> {
        self.inner.engines.iter().find(|e| e.engine == engine).ok_or(SchedError::NoEngine(engine))
    }

    /// Adds a vGPU with a weight in 1..=16 to every engine.
    pub fn add_vgpu(&self, id: VgpuId, weight: u8) -> Result<(), SchedError> {
        if !policy::WEIGHTS.contains(&weight) {
            return Err(SchedError::BadWeight(weight));
        }
        {
            let mut v = self.inner.vgpus.write();
            if v.contains_key(&id) {
                return Err(SchedError::Exists(id));
            }
            v.insert(id, Arc::new(Mutex::new(VgpuStats::default())));
        }
        for e in &self.inner.engines {
            let mut st = e.state.lock();
            let saved = st.host_values.clone();
            st.queues.insert(id, VgpuQueue { saved, ..VgpuQueue::default() });
            st.policy.add(id, weight);
        }
        Ok(())
    }

    /// Changes a vGPU's weight.
    pub fn set_weight(&self, id: VgpuId, weight: u8) -> Result<(), SchedError> {
        if !policy::WEIGHTS.contains(&weight) {
            return Err(SchedError::BadWeight(weight));
        }
        self.stats_of(id)?;
        for e in &self.inner.engines {
            e.state.lock().policy.set_weight(id, weight);
        }
        Ok(())
    }

    /// Removes a vGPU: its queued jobs are cancelled, its running ones finish, the engines it
    /// owns get the host's register values back. Returns its final statistics.
    pub fn remove_vgpu(&self, id: VgpuId) -> Result<VgpuStats, SchedError> {
        self.stats_of(id)?;
        self.reset_queue(id, crate::hw::EngineMask::all())?;
        for e in &self.inner.engines {
            let mut st = e.state.lock();
            st.queues.remove(&id);
            st.policy.remove(id);
            if st.owner == Some(id) {
                for (r, v) in e.list.iter().zip(st.host_values.iter()) {
                    self.inner.host.write_reg(e.engine, r.reg, if r.masked { v | 0xffff_0000 } else { *v });
                }
                st.owner = None;
            }
        }
        let s = self.inner.vgpus.write().remove(&id).ok_or(SchedError::UnknownVgpu(id))?;
        let out = s.lock().clone();
        Ok(out)
    }

    fn stats_of(&self, id: VgpuId) -> Result<Arc<Mutex<VgpuStats>>, SchedError> {
        self.inner.vgpus.read().get(&id).cloned().ok_or(SchedError::UnknownVgpu(id))
    }

    /// Queues `job` for vGPU `id` on `engine`. A refused job is completed with the reason (and
    /// the reason returned).
    pub fn submit(&self, id: VgpuId, engine: Engine, job: Box<dyn Job>) -> Result<(), SchedError> {
        let refused = match self.engine(engine) {
            Err(e) => Some(e),
            Ok(es) => {
                let mut st = es.state.lock();
                let engine_at = self.inner.host.engine_clock(engine).unwrap_or(st.stats.busy_ns);
                let shutdown = st.shutdown;
                match st.queues.get_mut(&id) {
                    _ if shutdown => Some(SchedError::ShuttingDown),
                    None => Some(SchedError::UnknownVgpu(id)),
                    Some(q) if q.hung => Some(SchedError::QueueHung { vgpu: id, engine }),
                    Some(q) if q.jobs.len() >= MAX_QUEUED => Some(SchedError::QueueFull(id)),
                    Some(q) => {
                        q.jobs.push_back(Queued { job, at: Instant::now(), engine_at });
                        es.submissions.fetch_add(1, Ordering::Release);
                        es.cv.notify_all();
                        return Ok(());
                    }
                }
            }
        };
        let e = refused.unwrap_or(SchedError::ShuttingDown);
        if let Ok(s) = self.stats_of(id) {
            s.lock().reject(&e.to_string());
        }
        job.complete(Err(JobError::Rejected(e.clone())));
        Err(e)
    }

    /// The guest reset `engines` (or the vGPU is being reset): queued jobs are cancelled, running
    /// ones finish, and the queues accept work again.
    pub fn reset_queue(&self, id: VgpuId, engines: crate::hw::EngineMask) -> Result<(), SchedError> {
        self.stats_of(id)?;
        for e in self.inner.engines.iter().filter(|e| engines.has(e.engine)) {
            let dropped: Vec<Queued> = {
                let mut st = e.state.lock();
                let mut d: Vec<Queued> = match st.queues.get_mut(&id) {
                    Some(q) => {
                        // As on hardware, the reset stops what runs: the running job stops at its
                        // next preemption point (a job that never reaches one, at the hang
                        // timeout), instead of the guest's reset waiting for it to end.
                        q.resetting = true;
                        q.jobs.drain(..).collect()
                    }
                    None => Vec::new(),
                };
                e.resets.fetch_add(1, Ordering::AcqRel);
                if st.running == Some(id) {
                    // Stopped at its next command even where it cannot be preempted
                    // (arbitration off, as i915 runs a GVT-g guest's batches).
                    self.inner.host.abort(e.engine);
                }
                while st.running == Some(id) {
                    e.cv.wait(&mut st);
                }
                e.resets.fetch_sub(1, Ordering::AcqRel);
                if let Some(q) = st.queues.get_mut(&id) {
                    // The job stopped by the reset went back to the queue: it goes too.
                    d.extend(q.jobs.drain(..));
                    q.hung = false;
                    q.resetting = false;
                }
                e.cv.notify_all();
                d
            };
            cancel(&self.inner, id, dropped, "engine reset");
        }
        Ok(())
    }

    /// Waits until vGPU `id` has nothing queued or running.
    pub fn wait_idle(&self, id: VgpuId) {
        for e in &self.inner.engines {
            let mut st = e.state.lock();
            while st.running == Some(id) || st.queues.get(&id).is_some_and(|q| !q.jobs.is_empty()) {
                e.cv.wait(&mut st);
            }
        }
    }

    /// The statistics of vGPU `id`.
    pub fn stats(&self, id: VgpuId) -> Option<VgpuStats> {
        self.stats_of(id).ok().map(|s| s.lock().clone())
    }

    /// Records a workload the vGPU refused before submitting it (a scanner rejection).
    pub fn record_rejection(&self, id: VgpuId, reason: &str) {
        if let Ok(s) = self.stats_of(id) {
            s.lock().reject(reason);
        }
    }

    /// Adds `bytes` scanned for vGPU `id` (copied from guest memory and audited).
    pub fn record_scanned(&self, id: VgpuId, bytes: u64) {
        if let Ok(s) = self.stats_of(id) {
            let mut s = s.lock();
            s.scanned_bytes = s.scanned_bytes.saturating_add(bytes);
        }
    }

    /// Records what a workload of vGPU `id` had dropped from its copy as the hardware would have.
    pub fn record_dropped(&self, id: VgpuId, w: &crate::cmd::ScannedWorkload) {
        if w.stats.dropped != 0 || w.stats.dropped_commands != 0 {
            if let Ok(s) = self.stats_of(id) {
                s.lock().dropped(&w.dropped, w.stats.dropped, w.stats.dropped_commands);
            }
        }
    }

    /// Starts (or stops) recording which vGPU occupied each engine when ([`Scheduler::take_trace`]).
    pub fn set_trace(&self, on: bool) {
        for e in &self.inner.engines {
            e.state.lock().trace = on.then(Vec::new);
        }
    }

    /// The occupancy recorded on `engine` since tracing started or the last take.
    pub fn take_trace(&self, engine: Engine) -> Vec<Slice> {
        self.engine(engine).ok().map_or_else(Vec::new, |e| {
            let mut st = e.state.lock();
            st.trace.as_mut().map(std::mem::take).unwrap_or_default()
        })
    }

    /// Counters of `engine`.
    pub fn engine_stats(&self, engine: Engine) -> Option<EngineStats> {
        self.engine(engine).ok().map(|e| e.state.lock().stats)
    }

    /// The vGPU's value of a switched engine register, if `reg` is one: live from the engine when
    /// the vGPU owns it.
    pub fn engine_reg(&self, id: VgpuId, engine: Engine, reg: u32) -> Option<u32> {
        let e = self.engine(engine).ok()?;
        let i = e.list.iter().position(|r| r.reg == reg)?;
        let st = e.state.lock();
        if st.owner == Some(id) {
            return e.list.get(i).map(|r| masked_value(r, self.inner.host.read_reg(engine, reg)));
        }
        st.queues.get(&id)?.saved.get(i).copied()
    }

    /// A guest write to a switched engine register (masked registers take the upper half as the
    /// write mask). Returns false if `reg` is not switched on `engine`.
    pub fn set_engine_reg(&self, id: VgpuId, engine: Engine, reg: u32, value: u32) -> bool {
        let Ok(e) = self.engine(engine) else { return false };
        let Some((i, r)) = e.list.iter().enumerate().find(|(_, r)| r.reg == reg) else { return false };
        let mut st = e.state.lock();
        let owner = st.owner == Some(id);
        let Some(slot) = st.queues.get_mut(&id).and_then(|q| q.saved.get_mut(i)) else { return false };
        *slot = if r.masked {
            let m = value >> 16;
            (*slot & !m) | (value & m)
        } else {
            value
        };
        if owner {
            self.inner.host.write_reg(engine, reg, value);
        }
        true
    }
}

fn cancel(inner: &Inner, id: VgpuId, jobs: Vec<Queued>, why: &'static str) {
    if jobs.is_empty() {
        return;
    }
    if let Some(s) = inner.vgpus.read().get(&id) {
        s.lock().cancelled += jobs.len() as u64;
    }
    for q in jobs {
        q.job.complete(Err(JobError::Cancelled(why)));
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        for e in &self.inner.engines {
            e.state.lock().shutdown = true;
            e.cv.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Whatever is still queued completes as cancelled.
        for e in &self.inner.engines {
            let left: Vec<(VgpuId, Vec<Queued>)> =
                e.state.lock().queues.iter_mut().map(|(id, q)| (*id, q.jobs.drain(..).collect())).collect();
            for (id, jobs) in left {
                cancel(&self.inner, id, jobs, "scheduler shut down");
            }
        }
    }
}

/// Switches the engine's registers from the current owner's values to `next`'s.
fn switch_owner(host: &dyn HostGpu, e: &EngineSched, st: &mut EngineState, next: VgpuId) {
    if st.owner == Some(next) {
        return;
    }
    if let Some(prev) = st.owner {
        let values: Vec<u32> = e.list.iter().map(|r| masked_value(r, host.read_reg(e.engine, r.reg))).collect();
        if let Some(q) = st.queues.get_mut(&prev) {
            q.saved = values;
        }
    }
    if let Some(q) = st.queues.get(&next) {
        for (r, v) in e.list.iter().zip(q.saved.iter()) {
            host.write_reg(e.engine, r.reg, if r.masked { v | 0xffff_0000 } else { *v });
        }
    }
    st.owner = Some(next);
    st.stats.switches += 1;
}

/// How often, in engine time, a running job past its slice asks whether another vGPU waits.
const CONTENTION_POLL_NS: u64 = 20_000;
/// Preemption points between two reads of the wall clock while a job is within its slice.
const WALL_CHECK_EVERY: u32 = 16;

/// Whether a vGPU other than `id` has work on the engine (or the scheduler stops). Never blocks:
/// a busy state lock answers no, and the next preemption point asks again.
fn contended(e: &EngineSched, id: VgpuId) -> bool {
    e.state
        .try_lock()
        .is_some_and(|st| st.shutdown || st.queues.iter().any(|(q, v)| *q != id && !v.hung && !v.jobs.is_empty()))
}

/// Whether the guest of `id` is resetting the engine (a busy state lock answers no; the next
/// preemption point asks again).
fn being_reset(e: &EngineSched, id: VgpuId) -> bool {
    e.state.try_lock().is_some_and(|st| st.queues.get(&id).is_some_and(|q| q.resetting))
}

fn engine_loop(inner: &Inner, index: usize) {
    let Some(e) = inner.engines.get(index) else { return };
    let host = &*inner.host;
    loop {
        let (id, mut q, slice_left) = {
            let mut st = e.state.lock();
            let mut spun = false;
            let id = loop {
                if st.shutdown {
                    return;
                }
                let EngineState { policy, queues, .. } = &mut *st;
                let pick =
                    policy.pick(|id| queues.get(&id).is_some_and(|q| !q.hung && !q.resetting && !q.jobs.is_empty()));
                match pick {
                    Some(id) => break id,
                    None if !spun => {
                        spun = true;
                        let seen = e.submissions.load(Ordering::Acquire);
                        MutexGuard::unlocked(&mut st, || {
                            let t0 = Instant::now();
                            while e.submissions.load(Ordering::Acquire) == seen && t0.elapsed() < IDLE_SPIN {
                                std::hint::spin_loop();
                            }
                        });
                    }
                    None => e.cv.wait(&mut st),
                }
            };
            let Some(q) = st.queues.get_mut(&id).and_then(|q| q.jobs.pop_front()) else { continue };
            st.running = Some(id);
            switch_owner(host, e, &mut st, id);
            (id, q, st.policy.slice_left(id))
        };
        // Past the rest of its slice, the job stops at its next preemption point if another vGPU
        // waits; alone on the engine it runs on. The slice ends in engine time or in wall time,
        // whichever comes first: on hardware the two agree, but a backend slower than real time
        // (the software GPU simulating a tight loop, a descheduled engine thread) must not hold
        // the engine longer on the wall clock. Only engine time is charged.
        let t0 = Instant::now();
        let next_check = std::cell::Cell::new(slice_left);
        let next_wall = std::cell::Cell::new(slice_left);
        let calls = std::cell::Cell::new(0u32);
        let preempt = |used: u64| {
            if e.resets.load(Ordering::Acquire) != 0 && being_reset(e, id) {
                return true;
            }
            if !inner.cfg.preemption {
                return false;
            }
            let n = calls.get().wrapping_add(1);
            calls.set(n);
            if used < next_check.get() {
                // The clock is read every WALL_CHECK_EVERY points only: points can be a few
                // nanoseconds apart.
                if n % WALL_CHECK_EVERY != 0 {
                    return false;
                }
                let wall = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                if wall < next_wall.get() {
                    return false;
                }
                next_wall.set(wall.saturating_add(CONTENTION_POLL_NS));
            }
            next_check.set(used.saturating_add(CONTENTION_POLL_NS));
            contended(e, id)
        };
        let run = RunControl { preempt: &preempt, timeout_ns: inner.cfg.hang_timeout_ns };
        let result = q.job.execute(host, e.engine, &run);
        // The backend's time: the job's own mediation inside `execute` is not.
        let mediation = result.as_ref().map_or(0, |r| r.mediation_ns);
        let host_wall = (t0.elapsed().as_nanos() as u64).saturating_sub(mediation);
        let engine_ns = match &result {
            Ok(r) => r.engine_ns,
            Err(JobError::Host(HostError::Hang { engine_ns, .. } | HostError::Refused { engine_ns, .. })) => *engine_ns,
            Err(_) => 0,
        };
        let preempted = matches!(&result, Ok(r) if r.preempted);
        // Stopped by the guest's engine reset: nothing failed; the reset drops it.
        let aborted = matches!(result, Err(JobError::Host(HostError::Aborted { .. })));
        let failed = matches!(result, Err(JobError::Host(_))) && !aborted;
        if aborted || failed {
            host.reset_engine(e.engine);
        }
        let stats = inner.vgpus.read().get(&id).cloned();
        if let Some(s) = &stats {
            let mut s = s.lock();
            if let Some(t) = s.engine_ns.get_mut(e.engine.index()) {
                *t += engine_ns;
            }
            s.host_wall_ns += host_wall;
            match &result {
                Ok(_) if preempted => s.preemptions += 1,
                Ok(_) => s.completed += 1,
                Err(_) if aborted => s.cancelled += 1,
                // Counted as a refusal where it was refused (the job's fetch).
                Err(e @ JobError::Host(HostError::Refused { .. })) => s.last_failure = Some(e.to_string()),
                Err(e) => {
                    s.failed += 1;
                    s.last_failure = Some(e.to_string());
                }
            }
        }
        let (busy_after, requeued) = {
            let mut st = e.state.lock();
            st.policy.charge(id, engine_ns);
            if preempted {
                // Its slice is over, however little engine time it used.
                st.policy.end_slice();
            }
            st.stats.jobs += u64::from(!preempted);
            st.stats.preemptions += u64::from(preempted);
            let start_ns = st.stats.busy_ns;
            if let Some(t) = st.trace.as_mut().filter(|t| t.len() < MAX_TRACE) {
                t.push(Slice { vgpu: id, start_ns, engine_ns });
            }
            st.stats.busy_ns += engine_ns;
            let busy = st.stats.busy_ns;
            let back = if preempted {
                match st.queues.get_mut(&id) {
                    // It resumes before anything the vGPU queued after it.
                    Some(vq) => {
                        vq.jobs.push_front(q);
                        None
                    }
                    None => Some(q),
                }
            } else {
                Some(q)
            };
            if back.is_none() {
                st.running = None;
                e.cv.notify_all();
            }
            (busy, back)
        };
        // Preempted and requeued: nothing completes.
        let Some(q) = requeued else { continue };
        let latency = q.at.elapsed().as_nanos() as u64;
        let result = if preempted {
            Err(JobError::Cancelled("the vGPU left while its work was preempted"))
        } else if aborted {
            Err(JobError::Cancelled("engine reset"))
        } else {
            result
        };
        q.job.complete(result.clone());
        if let Some(s) = &stats {
            let mut s = s.lock();
            s.latency(latency);
            let now = host.engine_clock(e.engine).unwrap_or(busy_after);
            s.engine_latency(now.saturating_sub(q.engine_at));
        }
        let dropped: Vec<Queued> = {
            let mut st = e.state.lock();
            let mut d = Vec::new();
            if result.is_err() {
                if failed {
                    // The reset lost every register: nothing of the owner's to save.
                    st.owner = None;
                    st.stats.resets += 1;
                }
                if let Some(vq) = st.queues.get_mut(&id).filter(|_| !preempted) {
                    vq.hung = true;
                    d = vq.jobs.drain(..).collect();
                }
            }
            d
        };
        // The vGPU counts as running until its dropped jobs have completed too, so waiting for it
        // to be idle sees every completion.
        cancel(inner, id, dropped, "an earlier workload on this engine failed");
        let mut st = e.state.lock();
        st.running = None;
        e.cv.notify_all();
    }
}
