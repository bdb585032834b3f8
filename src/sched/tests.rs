//! The scheduler on the software GPU: shares, containment, register switching, order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::cmd::emit::CmdBuf;
use crate::cmd::AddrSpace;
use crate::context::ShadowContext;
use crate::host::sim::testing::ring_workload;
use crate::host::sim::{CostModel, SimConfig, SimGpu};
use crate::host::HostJob;
use crate::hw::{EngineMask, Gen};

/// MFD_AVC_BSD_OBJECT: a video object command the software GPU charges 20 µs for.
const VIDEO_OBJECT: [u32; 6] = [0x7128_0004, 0, 0, 0, 0, 0];

/// A workload run from a hand-made shadow context (no guest behind it).
struct TestJob {
    ctx: Arc<Mutex<ShadowContext>>,
    ring: CmdBuf,
    /// The workload, once the context points at it (a preempted job resumes it).
    work: Option<crate::cmd::ScannedWorkload>,
    on_done: Box<dyn FnOnce(Result<RunReport, JobError>) + Send>,
}

impl Job for TestJob {
    fn execute(&mut self, host: &dyn HostGpu, engine: Engine, run: &RunControl<'_>) -> Result<RunReport, JobError> {
        let mut ctx = self.ctx.lock();
        let w = match &mut self.work {
            Some(w) => w,
            None => self.work.insert(ring_workload(&mut ctx, &host.layout(engine), &self.ring)),
        };
        let mut job = HostJob::new(w, None, &mut ctx, false);
        job.preempt = Some(run.preempt);
        job.timeout_ns = run.timeout_ns;
        Ok(host.run(engine, job)?)
    }

    fn complete(self: Box<Self>, result: Result<RunReport, JobError>) {
        (self.on_done)(result)
    }
}

fn gpu(cost: CostModel) -> Arc<SimGpu> {
    Arc::new(SimGpu::new(SimConfig { cost, ..SimConfig::default() }))
}

fn job(
    ctx: &Arc<Mutex<ShadowContext>>,
    ring: CmdBuf,
    on_done: impl FnOnce(Result<RunReport, JobError>) + Send + 'static,
) -> Box<dyn Job> {
    Box::new(TestJob { ctx: ctx.clone(), ring, work: None, on_done: Box::new(on_done) })
}

/// Keeps a vGPU's queue saturated: every completion submits the next job until `stop`.
fn saturate(sched: &Arc<Scheduler>, id: VgpuId, engine: Engine, ring: CmdBuf, depth: usize, stop: &Arc<AtomicBool>) {
    let ctx = Arc::new(Mutex::new(ShadowContext::with_blank_clean(Gen::Gen9, engine)));
    fn next(
        s: std::sync::Weak<Scheduler>,
        id: VgpuId,
        e: Engine,
        ctx: Arc<Mutex<ShadowContext>>,
        ring: CmdBuf,
        stop: Arc<AtomicBool>,
    ) -> Box<dyn Job> {
        let (c2, r2) = (ctx.clone(), ring.clone());
        job(&ctx, ring, move |r| {
            if r.is_ok() && !stop.load(Ordering::SeqCst) {
                if let Some(sched) = s.upgrade() {
                    let _ = sched.submit(id, e, next(Arc::downgrade(&sched), id, e, c2, r2, stop));
                }
            }
        })
    }
    for _ in 0..depth {
        let j = next(Arc::downgrade(sched), id, engine, ctx.clone(), ring.clone(), stop.clone());
        sched.submit(id, engine, j).unwrap();
    }
}

fn video_ring(objects: usize) -> CmdBuf {
    let mut c = CmdBuf::new();
    for _ in 0..objects {
        c.raw(&VIDEO_OBJECT);
    }
    c
}

/// Runs until the engine has done `engine_ns` of work.
fn run_for(sched: &Scheduler, engine: Engine, engine_ns: u64) {
    while sched.engine_stats(engine).unwrap().busy_ns < engine_ns {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn four_vgpus_weighted_1_2_4_8_share_one_engine() {
    let sched = Arc::new(Scheduler::new(gpu(CostModel::default()), SchedConfig::default()));
    let stop = Arc::new(AtomicBool::new(false));
    for (id, w) in [(1, 1), (2, 2), (3, 4), (4, 8)] {
        sched.add_vgpu(id, w).unwrap();
    }
    for id in 1..=4 {
        // Different workload sizes per vGPU: 62..122 µs.
        saturate(&sched, id, Engine::Vcs, video_ring(2 + id as usize), 3, &stop);
    }
    run_for(&sched, Engine::Vcs, 2_000_000_000);
    stop.store(true, Ordering::SeqCst);
    for id in 1..=4 {
        sched.wait_idle(id);
    }
    let used: Vec<u64> = (1..=4).map(|id| sched.stats(id).unwrap().engine_ns[Engine::Vcs.index()]).collect();
    let total: u64 = used.iter().sum();
    for (u, w) in used.iter().zip([1.0, 2.0, 4.0, 8.0]) {
        let (share, target) = (*u as f64 / total as f64, w / 15.0);
        assert!((share - target).abs() <= 0.02 * target, "share {share:.4} vs {target:.4}: {used:?}");
    }
    for id in 1..=4 {
        let s = sched.stats(id).unwrap();
        assert_eq!((s.failed, s.cancelled), (0, 0));
    }
}

#[test]
fn one_busy_vgpu_beside_seven_idle_ones_keeps_the_engine() {
    let sched = Arc::new(Scheduler::new(gpu(CostModel::default()), SchedConfig::default()));
    let stop = Arc::new(AtomicBool::new(false));
    for id in 1..=8 {
        sched.add_vgpu(id, 2).unwrap();
    }
    saturate(&sched, 5, Engine::Vcs, video_ring(5), 2, &stop);
    run_for(&sched, Engine::Vcs, 500_000_000);
    stop.store(true, Ordering::SeqCst);
    sched.wait_idle(5);
    let es = sched.engine_stats(Engine::Vcs).unwrap();
    let busy = sched.stats(5).unwrap();
    assert_eq!(busy.engine_ns[Engine::Vcs.index()], es.busy_ns, "every ns of engine time went to the busy vGPU");
    assert_eq!(es.switches, 1, "the engine never left it for an idle vGPU");
    assert_eq!(busy.completed, es.jobs);
}

#[test]
fn a_hung_workload_fails_only_its_queue() {
    let cost = CostModel { hang_timeout_ns: 2_000_000, ..CostModel::default() };
    let g = gpu(cost);
    let sched = Arc::new(Scheduler::new(g.clone(), SchedConfig::default()));
    for id in 1..=3 {
        sched.add_vgpu(id, 4).unwrap();
    }
    let done = Arc::new(AtomicU64::new(0));
    let ctxs: Vec<_> =
        (0..4).map(|_| Arc::new(Mutex::new(ShadowContext::with_blank_clean(Gen::Gen9, Engine::Vcs)))).collect();
    // vGPU 2: a semaphore nobody signals, then two more jobs.
    let sem = g.context_area(Engine::Vcs) + 0x800;
    let mut hang = CmdBuf::new();
    hang.semaphore_wait(AddrSpace::Ggtt, sem, 1);
    let results = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let r = results.clone();
        let ring = if i == 0 { hang.clone() } else { video_ring(1) };
        sched.submit(2, Engine::Vcs, job(&ctxs[2], ring, move |x| r.lock().push(x))).unwrap();
    }
    // vGPUs 1 and 3: 50 jobs each, before and after the hang.
    for id in [1u32, 3] {
        for _ in 0..50 {
            let d = done.clone();
            let j = job(&ctxs[id as usize], video_ring(2), move |r| {
                assert!(r.is_ok(), "{r:?}");
                d.fetch_add(1, Ordering::SeqCst);
            });
            sched.submit(id, Engine::Vcs, j).unwrap();
        }
    }
    for id in 1..=3 {
        sched.wait_idle(id);
    }
    assert_eq!(done.load(Ordering::SeqCst), 100, "the other vGPUs lost no workload");
    let r = results.lock().clone();
    assert!(matches!(&r[0], Err(JobError::Host(HostError::Hang { .. }))), "{r:?}");
    assert!(r[1..].iter().all(|x| matches!(x, Err(JobError::Cancelled(_)))), "{r:?}");
    let s2 = sched.stats(2).unwrap();
    assert_eq!((s2.failed, s2.cancelled), (1, 2), "{s2:?} {r:?}");
    assert_eq!(sched.engine_stats(Engine::Vcs).unwrap().resets, 1);
    // Closed until the guest resets the engine, then open again.
    let e = sched.submit(2, Engine::Vcs, job(&ctxs[2], video_ring(1), |_| {}));
    assert_eq!(e, Err(SchedError::QueueHung { vgpu: 2, engine: Engine::Vcs }));
    sched.reset_queue(2, EngineMask::VCS).unwrap();
    let ok = Arc::new(AtomicBool::new(false));
    let o = ok.clone();
    sched.submit(2, Engine::Vcs, job(&ctxs[2], video_ring(1), move |r| o.store(r.is_ok(), Ordering::SeqCst))).unwrap();
    sched.wait_idle(2);
    assert!(ok.load(Ordering::SeqCst));
    for id in [1, 3] {
        let s = sched.stats(id).unwrap();
        assert_eq!((s.completed, s.failed, s.cancelled), (50, 0, 0));
    }
}

#[test]
fn engine_registers_follow_their_owner() {
    let g = gpu(CostModel::default());
    let sched = Scheduler::new(g.clone(), SchedConfig::default());
    sched.add_vgpu(1, 1).unwrap();
    sched.add_vgpu(2, 1).unwrap();
    let mocs = 0xcc00; // BCS MOCS 0, switched on Gen9
    assert!(sched.set_engine_reg(1, Engine::Bcs, mocs, 0x11));
    assert!(sched.set_engine_reg(2, Engine::Bcs, mocs, 0x22));
    assert!(!sched.set_engine_reg(1, Engine::Bcs, 0x2_2034, 1), "RING_HEAD is not switched");
    let page = g.context_area(Engine::Bcs);
    let ctx = Arc::new(Mutex::new(ShadowContext::with_blank_clean(Gen::Gen9, Engine::Bcs)));
    let run = |id: VgpuId, ring: CmdBuf| {
        sched.submit(id, Engine::Bcs, job(&ctx, ring, |r| assert!(r.is_ok(), "{r:?}"))).unwrap();
        sched.wait_idle(id);
    };
    let mut a = CmdBuf::new();
    a.srm(mocs, AddrSpace::Ggtt, page + 0x100).lri(&[(mocs + 4, 0x77)]);
    run(1, a);
    let mut b = CmdBuf::new();
    b.srm(mocs, AddrSpace::Ggtt, page + 0x104).srm(mocs + 4, AddrSpace::Ggtt, page + 0x108);
    run(2, b);
    let mut a2 = CmdBuf::new();
    a2.srm(mocs + 4, AddrSpace::Ggtt, page + 0x10c);
    run(1, a2);
    let mut buf = [0u8; 16];
    g.memory().read_ggtt(page + 0x100, &mut buf).unwrap();
    let v: Vec<u32> = buf.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(v, [0x11, 0x22, 0, 0x77], "each vGPU sees its own values, and keeps what it loaded");
    assert_eq!(sched.engine_reg(1, Engine::Bcs, mocs + 4), Some(0x77));
    assert_eq!(sched.engine_stats(Engine::Bcs).unwrap().switches, 3);
    sched.remove_vgpu(1).unwrap();
    assert_eq!(g.read_reg(Engine::Bcs, mocs + 4), 0, "the owner left: the host's values are back");
}

#[test]
fn completions_in_submission_order_and_refusals() {
    let sched = Scheduler::new(gpu(CostModel::default()), SchedConfig::default());
    sched.add_vgpu(7, 3).unwrap();
    assert_eq!(sched.add_vgpu(7, 3), Err(SchedError::Exists(7)));
    assert_eq!(sched.add_vgpu(8, 0), Err(SchedError::BadWeight(0)));
    assert_eq!(sched.add_vgpu(8, 17), Err(SchedError::BadWeight(17)));
    let order = Arc::new(Mutex::new(Vec::new()));
    let ctx = Arc::new(Mutex::new(ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs)));
    for i in 0..20 {
        let o = order.clone();
        sched.submit(7, Engine::Rcs, job(&ctx, video_ring(0).noop(2).clone(), move |_| o.lock().push(i))).unwrap();
    }
    sched.wait_idle(7);
    assert_eq!(*order.lock(), (0..20).collect::<Vec<_>>());
    let refused = Arc::new(AtomicBool::new(false));
    let r = refused.clone();
    let e = sched.submit(9, Engine::Rcs, job(&ctx, CmdBuf::new(), move |x| r.store(x.is_err(), Ordering::SeqCst)));
    assert_eq!(e, Err(SchedError::UnknownVgpu(9)));
    assert!(refused.load(Ordering::SeqCst), "a refused job is completed with the reason");
    assert_eq!(
        sched.submit(7, Engine::Vcs2, job(&ctx, CmdBuf::new(), |_| {})),
        Err(SchedError::NoEngine(Engine::Vcs2))
    );
    let s = sched.remove_vgpu(7).unwrap();
    assert_eq!(s.completed, 20);
    assert_eq!(s.latencies_ns.len(), 20);
    assert!(sched.stats(7).is_none());
}

#[test]
fn an_engine_reset_stops_the_running_workload_at_once() {
    // The guest resets an engine whose workload never ends (an endless batch, here a semaphore
    // nobody signals, with no hang timeout in sight): as on hardware, the reset stops it. A
    // GDRST write that waited for the workload to end blocked the guest's MMIO, and QEMU's
    // vfio-user client gave up on the reply (IGT gem_ctx_exec basic-norecovery).
    for (preemption, arbitration_off) in [(true, false), (false, false), (true, true)] {
        let cost = CostModel { hang_timeout_ns: u64::MAX / 4, ..CostModel::default() };
        let g = gpu(cost);
        let cfg = SchedConfig { preemption, ..SchedConfig::default() };
        let sched = Arc::new(Scheduler::new(g.clone(), cfg));
        sched.add_vgpu(1, 4).unwrap();
        let ctx = Arc::new(Mutex::new(ShadowContext::with_blank_clean(Gen::Gen9, Engine::Vcs)));
        let mut hang = CmdBuf::new();
        if arbitration_off {
            // As i915 runs a GVT-g guest's batches: no preemption point until they end.
            hang.raw(&[0x0400_0000]);
        }
        hang.semaphore_wait(AddrSpace::Ggtt, g.context_area(Engine::Vcs) + 0x800, 1);
        let results = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..2 {
            let r = results.clone();
            sched.submit(1, Engine::Vcs, job(&ctx, hang.clone(), move |x| r.lock().push(x))).unwrap();
        }
        // Let the first one start (it never ends).
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = sched.clone();
        std::thread::spawn(move || {
            let _ = tx.send(s2.reset_queue(1, EngineMask::VCS));
        });
        let reset = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert!(matches!(reset, Ok(Ok(()))), "{preemption} {arbitration_off}: the reset did not return: {reset:?}");
        sched.wait_idle(1);
        let r = results.lock().clone();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|x| matches!(x, Err(JobError::Cancelled(_)))), "{preemption} {arbitration_off}: {r:?}");
        assert_eq!(sched.stats(1).unwrap().failed, 0, "a reset is no failure");
        // The engine is the vGPU's again.
        let ok = Arc::new(AtomicBool::new(false));
        let o = ok.clone();
        sched.submit(1, Engine::Vcs, job(&ctx, video_ring(1), move |r| o.store(r.is_ok(), Ordering::SeqCst))).unwrap();
        sched.wait_idle(1);
        assert!(ok.load(Ordering::SeqCst));
    }
}
