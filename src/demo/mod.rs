//! The engine of `shadowgpu demo`: one software GPU, several vGPUs of different types and weights,
//! each driven by the reference guest driver in its own thread. Most keep their engines busy with a
//! realistic mix — 3D-shaped batches on the render engine, blits on the blitter, video-shaped
//! batches on the video engine — and one of them also tries to escape its vGPU; an `hmi` vGPU
//! renders one frame per display refresh, as an operator panel does; an optional neighbour
//! (`hog`) runs long batches of heavy draws. The report says what each got: workloads,
//! render-engine share against its weight, latencies, the HMI's frame latencies, scan throughput,
//! rejections; and which vGPU occupied each engine over time.
//!
//! ```
//! use std::time::Duration;
//! use shadowgpu::demo::{run, DemoConfig};
//!
//! let cfg = DemoConfig { duration: Duration::from_millis(300), ..DemoConfig::default() };
//! let report = run(&cfg, &|_| {}).unwrap();
//! assert_eq!(report.vgpus.len(), 4);
//! assert!(report.vgpus.iter().all(|v| v.lost() == 0));
//! ```

pub mod svg;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::cmd::emit::{CmdBuf, PostSync};
use crate::cmd::{mix, AddrSpace};
use crate::guest::{Driver, GuestError, IrqLine};
use crate::host::sim::SimConfig;
use crate::hw::{Engine, Platform};
use crate::mdev::{GpuManager, IrqTrigger, ManagerError, MdevDevice, VgpuType, IRQ_MSI};
use crate::mm::GmLayout;
use crate::sched::SchedConfig;

type Mem = Arc<GuestMemoryMmap<()>>;

const MIB: u64 = 1 << 20;
/// Guest RAM per VM.
const RAM: u64 = 160 * MIB;
/// PPGTT space each guest maps (the blit mix spans 17 MiB of it).
const PPGTT: u64 = 64 * MIB;
/// Buckets of the occupancy timeline.
pub const TIMELINE_BUCKETS: usize = 200;

/// Errors of a demo run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A vGPU could not be created.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// A guest failed outside the expected escapes.
    #[error("vGPU {vgpu}: {why}")]
    Guest {
        /// Which.
        vgpu: u32,
        /// What failed.
        why: GuestError,
    },
    /// A bad option.
    #[error("{0}")]
    Config(String),
}

/// One vGPU of the demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoVgpu {
    /// Type name (a GVT-g type or one of the demo's custom types `hmi`, `batch`).
    pub ty: String,
    /// Weight, overriding the type's.
    pub weight: Option<u8>,
    /// Also tries escapes.
    pub attacker: bool,
}

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Platform of the software GPU.
    pub platform: Platform,
    /// The vGPUs.
    pub vgpus: Vec<DemoVgpu>,
    /// How long the guests submit.
    pub duration: Duration,
    /// Render workloads each guest keeps queued.
    pub outstanding: usize,
    /// Draw calls per render batch.
    pub draws: usize,
    /// Vertices per draw of a render batch (on the software GPU 2 ns of engine time each).
    pub vertices: u32,
    /// Add a neighbour (type `compute`, weight 4) that keeps two long batches of heavy draws
    /// (20 ms of engine time each) queued on the render engine.
    pub hog: bool,
    /// Preempt work past its slice (off: as GVT-g, a long batch holds the engine to its end).
    pub preemption: bool,
    /// Display refresh period an `hmi` vGPU renders its frames at.
    pub frame_period: Duration,
    /// Draw calls per HMI frame.
    pub frame_draws: usize,
}

impl Default for DemoConfig {
    /// Four vGPUs on a Coffee Lake: `GVTg_V5_8` (weight 2), `GVTg_V5_4` (4), `hmi` (8, 60 frames a
    /// second of 64 draws) and `batch` (2, also trying escapes), for 4 seconds; no hog; preemption
    /// on.
    fn default() -> Self {
        let v = |ty: &str, attacker| DemoVgpu { ty: ty.into(), weight: None, attacker };
        DemoConfig {
            platform: Platform::CoffeeLake,
            vgpus: vec![v("GVTg_V5_8", false), v("GVTg_V5_4", false), v("hmi", false), v("batch", true)],
            duration: Duration::from_secs(4),
            outstanding: 8,
            draws: 8,
            vertices: 65_536,
            hog: false,
            preemption: true,
            frame_period: Duration::from_micros(16_667),
            frame_draws: 64,
        }
    }
}

/// An escape attempt and what the vGPU answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escape {
    /// What the guest tried.
    pub attempt: &'static str,
    /// Rejected (the only acceptable outcome).
    pub rejected: bool,
    /// The device's reason.
    pub reason: String,
}

/// What a guest thread does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Keeps render, blit and video work queued (and tries escapes when `attacker`).
    Mix {
        /// Also tries escapes.
        attacker: bool,
    },
    /// Renders one frame per display refresh and waits for it (an `hmi` vGPU).
    Frames,
    /// Keeps two long batches of heavy draws queued on the render engine.
    Hog,
}

/// One HMI frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// When it was submitted, from the start of the run.
    pub at: Duration,
    /// Submission to completion, wall time, ns.
    pub wall_ns: u64,
    /// Submission to completion in render-engine time (the engine's busy time that passed), ns.
    pub engine_ns: u64,
}

/// The `p`th percentile (nearest rank) of `v`.
fn percentile(mut v: Vec<u64>, p: f64) -> Option<u64> {
    v.sort_unstable();
    let last = v.len().checked_sub(1)?;
    let i = ((last as f64) * p.clamp(0.0, 100.0) / 100.0).round() as usize;
    v.get(i).copied()
}

/// One vGPU's results.
#[derive(Clone, Debug, PartialEq)]
pub struct VgpuReport {
    /// Id.
    pub id: u32,
    /// Type.
    pub ty: String,
    /// Weight.
    pub weight: u8,
    /// What its guest did.
    pub role: Role,
    /// Workloads the guest submitted and the device accepted.
    pub accepted: u64,
    /// Completed.
    pub completed: u64,
    /// Failed on the engine.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Engine time per engine index, ns.
    pub engine_ns: [u64; 5],
    /// Share of the render engine's time used by the vGPUs.
    pub render_share: f64,
    /// The share its weight entitles it to among the vGPUs that keep the engine busy, of the time
    /// the HMI frames left (`None` for a vGPU rendering frames, which takes what its frames need).
    pub expected_share: Option<f64>,
    /// Submission-to-completion latency median and 99th percentile, µs.
    pub latency_us: (f64, f64),
    /// Bytes scanned.
    pub scanned_bytes: u64,
    /// Rejections by class.
    pub rejections: BTreeMap<String, u64>,
    /// Escape attempts.
    pub escapes: Vec<Escape>,
    /// Its frames, for a vGPU rendering frames.
    pub frames: Vec<Frame>,
}

impl VgpuReport {
    /// The `p`th percentile of the frames' latency in engine time, ns.
    pub fn frame_percentile(&self, p: f64) -> Option<u64> {
        percentile(self.frames.iter().map(|f| f.engine_ns).collect(), p)
    }

    /// The `p`th percentile of the frames' latency in wall time, ns.
    pub fn frame_wall_percentile(&self, p: f64) -> Option<u64> {
        percentile(self.frames.iter().map(|f| f.wall_ns).collect(), p)
    }

    /// Frames whose engine-time latency exceeded `period`.
    pub fn frames_late(&self, period: Duration) -> usize {
        self.frames.iter().filter(|f| u128::from(f.engine_ns) > period.as_nanos()).count()
    }

    /// Accepted workloads that neither completed nor failed (must be 0).
    pub fn lost(&self) -> u64 {
        self.accepted.saturating_sub(self.completed + self.failed + self.cancelled)
    }

    /// Scan throughput over the run, MB/s.
    pub fn scanned_mb_s(&self, run: Duration) -> f64 {
        self.scanned_bytes as f64 / 1e6 / run.as_secs_f64().max(1e-9)
    }
}

/// One engine's occupancy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineReport {
    /// Engine.
    pub engine: Engine,
    /// Engine time used, ns.
    pub busy_ns: u64,
    /// Per bucket of engine time, ns per vGPU (in report order).
    pub timeline: Vec<Vec<u64>>,
}

/// What a demo run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoReport {
    /// Platform.
    pub platform: Platform,
    /// Wall time the guests ran.
    pub wall: Duration,
    /// Per vGPU.
    pub vgpus: Vec<VgpuReport>,
    /// Per engine.
    pub engines: Vec<EngineReport>,
    /// The display refresh period HMI frames were rendered at.
    pub frame_period: Duration,
    /// Whether the scheduler preempted.
    pub preemption: bool,
}

/// What one guest thread counted.
#[derive(Debug, Default)]
struct GuestTally {
    accepted: u64,
    escapes: Vec<Escape>,
    /// Per frame: submission time from the start of the run, wall latency.
    frames: Vec<(Duration, u64)>,
}

/// The escapes the attacking guest tries on the blitter, round robin, from its ring: a
/// privileged buffer, where the scanner refuses what would reach beyond the vGPU. (From a
/// non-privileged batch the copy instead drops what the hardware would drop there.)
fn escapes() -> Vec<(&'static str, CmdBuf)> {
    let mut v = Vec::new();
    let mut b = CmdBuf::new();
    b.store_dword(AddrSpace::Ggtt, 0x1000, 0xbad);
    v.push(("store into the host's graphics memory", b));
    let mut b = CmdBuf::new();
    b.lri(&[(crate::hw::reg::GDRST, 1)]);
    v.push(("reset the physical GPU with a register write", b));
    let mut b = CmdBuf::new();
    b.bb_start(AddrSpace::Ggtt, 0x2000, false);
    v.push(("run commands from outside its windows", b));
    let mut b = CmdBuf::new();
    b.flush_dw(PostSync::WriteImmediate, AddrSpace::Ggtt, 0x3000, 1, false, false);
    v.push(("flush post-sync into the host's memory", b));
    let mut b = CmdBuf::new();
    mix::command(&mut b, "3DPRIMITIVE", None);
    v.push(("render command on the blitter", b));
    v
}

type Guest<'a> = Driver<&'a MdevDevice<Mem>, Mem>;

/// Engine time of one draw of the hog's batches (`CostModel` default: 2 us + 2 ns per vertex).
const HOG_VERTICES: u32 = 249_000;
/// Draws per hog batch: 40 of 0.5 ms, 20 ms of engine time.
const HOG_DRAWS: usize = 40;

fn guest_thread(
    dev: &MdevDevice<Mem>,
    mem: Mem,
    cfg: &DemoConfig,
    role: Role,
    t0: Instant,
    stop: &AtomicBool,
) -> Result<GuestTally, GuestError> {
    let line = IrqLine::default();
    let l = line.clone();
    dev.set_irq(IRQ_MSI, Some(IrqTrigger::Callback(Arc::new(move || l.signal()))))
        .map_err(|e| GuestError::Bus(e.to_string()))?;
    let mut g = Driver::probe_with(dev, mem, (MIB, RAM - MIB), line, PPGTT)?;
    let tally = match role {
        Role::Mix { attacker } => mix_guest(&mut g, cfg, attacker, stop)?,
        Role::Frames => frame_guest(&mut g, cfg, t0, stop)?,
        Role::Hog => hog_guest(&mut g, stop)?,
    };
    dev.vgpu().engines().wait_idle();
    Ok(tally)
}

/// An operator panel: one frame of `frame_draws` draws per display refresh, waited for before
/// the next; a frame that ends past its refresh pushes the next to the refresh after.
fn frame_guest(g: &mut Guest<'_>, cfg: &DemoConfig, t0: Instant, stop: &AtomicBool) -> Result<GuestTally, GuestError> {
    let frame = mix::render_batch_to(cfg.frame_draws, g.data_va());
    let period = cfg.frame_period.max(Duration::from_micros(100));
    let mut tally = GuestTally::default();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
            continue;
        }
        let at = Instant::now();
        let s = g.submit(Engine::Rcs, &frame)?;
        tally.accepted += 1;
        g.wait(Engine::Rcs, s, Duration::from_secs(10))?;
        tally.frames.push((at.saturating_duration_since(t0), at.elapsed().as_nanos() as u64));
        while next <= Instant::now() {
            next += period;
        }
    }
    Ok(tally)
}

/// A compute-heavy neighbour: two batches of heavy draws (20 ms of engine time each) queued on
/// the render engine at all times.
fn hog_guest(g: &mut Guest<'_>, stop: &AtomicBool) -> Result<GuestTally, GuestError> {
    let batch = mix::render_batch_with(HOG_DRAWS, HOG_VERTICES, g.data_va());
    let mut tally = GuestTally::default();
    let mut pending = std::collections::VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        if pending.len() >= 2 {
            if let Some(s) = pending.pop_front() {
                g.wait(Engine::Rcs, s, Duration::from_secs(10))?;
            }
        }
        pending.push_back(g.submit(Engine::Rcs, &batch)?);
        tally.accepted += 1;
    }
    for s in pending {
        g.wait(Engine::Rcs, s, Duration::from_secs(10))?;
    }
    Ok(tally)
}

/// Render, blit and video work queued deep; escapes on the blitter when `attacker`.
fn mix_guest(g: &mut Guest<'_>, cfg: &DemoConfig, attacker: bool, stop: &AtomicBool) -> Result<GuestTally, GuestError> {
    let data = g.data_va();
    let render = mix::render_batch_with(cfg.draws, cfg.vertices, data);
    let blit = mix::blit_batch(1, data);
    let media = mix::media_batch_to(4, data + 8);
    let escapes = escapes();
    let mut tally = GuestTally::default();
    let t = Duration::from_secs(10);
    let mut pending = std::collections::VecDeque::new();
    let (mut last_bcs, mut last_vcs) = (None, None);
    let mut next_escape = Instant::now() + Duration::from_millis(50);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if pending.len() >= cfg.outstanding {
            if let Some(s) = pending.pop_front() {
                g.wait(Engine::Rcs, s, t)?;
            }
        }
        pending.push_back(g.submit(Engine::Rcs, &render)?);
        tally.accepted += 1;
        if i % 4 == 0 && g.engines().has(Engine::Bcs) {
            if let Some(s) = last_bcs {
                g.wait(Engine::Bcs, s, t)?;
            }
            last_bcs = Some(g.submit(Engine::Bcs, &blit)?);
            tally.accepted += 1;
        }
        if i % 8 == 0 && g.engines().has(Engine::Vcs) {
            if let Some(s) = last_vcs {
                g.wait(Engine::Vcs, s, t)?;
            }
            last_vcs = Some(g.submit(Engine::Vcs, &media)?);
            tally.accepted += 1;
        }
        if attacker && Instant::now() >= next_escape {
            next_escape = Instant::now() + Duration::from_millis(50);
            if let Some(s) = last_bcs.take() {
                g.wait(Engine::Bcs, s, t)?;
            }
            let (attempt, cmds) =
                escapes.get(tally.escapes.len() % escapes.len()).ok_or(GuestError::NoSpace("escape"))?;
            match g.submit_ring(Engine::Bcs, cmds) {
                Ok(s) => {
                    tally.accepted += 1;
                    g.wait(Engine::Bcs, s, t)?;
                    tally.escapes.push(Escape { attempt, rejected: false, reason: "accepted".into() });
                }
                Err(GuestError::Bus(why)) => {
                    let reason = why.split_once("rejected: ").map_or(why.as_str(), |(_, r)| r).to_string();
                    tally.escapes.push(Escape { attempt, rejected: true, reason });
                    // As i915's hang recovery would: reset the engine and carry on.
                    g.reset_engine(Engine::Bcs)?;
                }
                Err(e) => return Err(e),
            }
        }
        i += 1;
    }
    for s in pending {
        g.wait(Engine::Rcs, s, t)?;
    }
    for (e, s) in [(Engine::Bcs, last_bcs), (Engine::Vcs, last_vcs)] {
        if let Some(s) = s {
            g.wait(e, s, t)?;
        }
    }
    Ok(tally)
}

fn timeline(slices: &[crate::sched::Slice], ids: &[u32]) -> Vec<Vec<u64>> {
    let total = slices.last().map_or(0, |s| s.start_ns + s.engine_ns);
    let mut buckets = vec![vec![0u64; ids.len()]; TIMELINE_BUCKETS];
    if total == 0 {
        return buckets;
    }
    let width = total.div_ceil(TIMELINE_BUCKETS as u64).max(1);
    for s in slices {
        let Some(col) = ids.iter().position(|&id| id == s.vgpu) else { continue };
        let (mut at, end) = (s.start_ns, s.start_ns + s.engine_ns);
        while at < end {
            let b = (at / width) as usize;
            let stop = ((b as u64 + 1) * width).min(end);
            if let Some(x) = buckets.get_mut(b).and_then(|r| r.get_mut(col)) {
                *x += stop - at;
            }
            at = stop;
        }
    }
    buckets
}

/// Runs the demo; `progress` is called with the fraction of the run done, about ten times a
/// second.
pub fn run(cfg: &DemoConfig, progress: &(dyn Fn(f64) + Sync)) -> Result<DemoReport, DemoError> {
    if cfg.vgpus.is_empty() || cfg.outstanding == 0 || cfg.frame_draws == 0 {
        return Err(DemoError::Config("at least one vGPU, one outstanding workload and one draw per frame".into()));
    }
    let layout = GmLayout { aperture: 1 << 30, ..GmLayout::DESKTOP };
    let sched = SchedConfig { preemption: cfg.preemption, ..SchedConfig::default() };
    // Engines run no faster than real time, so a heavy draw takes the wall time its engine time
    // says and the guests' wall-clock pacing (frames, queues) meets the engine as on hardware.
    let sim = SimConfig { layout, real_time: true, ..SimConfig::default() };
    let gpu = GpuManager::software_sim(cfg.platform, sim, sched)?;
    for (name, ap, hid, weight) in [("hmi", 32, 128, 8), ("batch", 32, 128, 2), ("compute", 32, 128, 4)] {
        let t = VgpuType::custom(name, ap * MIB, hid * MIB, 2, weight).map_err(|e| DemoError::Config(e.to_string()))?;
        gpu.add_type(t)?;
    }
    let mut plan: Vec<(String, Option<u8>, Role)> = cfg
        .vgpus
        .iter()
        .map(|v| {
            let role = if v.ty == "hmi" && !v.attacker { Role::Frames } else { Role::Mix { attacker: v.attacker } };
            (v.ty.clone(), v.weight, role)
        })
        .collect();
    if cfg.hog {
        plan.push(("compute".into(), None, Role::Hog));
    }
    let mut devs = Vec::new();
    for (ty, weight, role) in plan {
        let mem: Mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)])
                .map_err(|e| DemoError::Config(e.to_string()))?,
        );
        let dev = gpu.create(&ty, mem.clone())?;
        if let Some(w) = weight {
            gpu.scheduler().set_weight(dev.vgpu().params().id, w).map_err(|e| DemoError::Config(e.to_string()))?;
        }
        devs.push((dev, mem, role, weight));
    }
    gpu.scheduler().set_trace(true);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let results: Vec<Result<GuestTally, GuestError>> = std::thread::scope(|s| {
        let handles: Vec<_> = devs
            .iter()
            .map(|(dev, mem, role, _)| {
                let (mem, stop, role) = (mem.clone(), &stop, *role);
                s.spawn(move || guest_thread(dev, mem, cfg, role, t0, stop))
            })
            .collect();
        while t0.elapsed() < cfg.duration && !handles.iter().all(|h| h.is_finished()) {
            progress((t0.elapsed().as_secs_f64() / cfg.duration.as_secs_f64().max(1e-9)).min(1.0));
            std::thread::sleep(Duration::from_millis(100).min(cfg.duration));
        }
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(GuestError::Probe("guest thread panicked".into()))))
            .collect()
    });
    let wall = t0.elapsed();
    progress(1.0);
    let ids: Vec<u32> = devs.iter().map(|(d, ..)| d.vgpu().params().id).collect();
    let weights: Vec<u8> = devs.iter().map(|(d, _, _, w)| w.unwrap_or(d.vgpu().params().weight)).collect();
    let mut render_total = 0u64;
    let mut stats = Vec::new();
    for ((dev, ..), r) in devs.iter().zip(results) {
        let id = dev.vgpu().params().id;
        let tally = r.map_err(|why| DemoError::Guest { vgpu: id, why })?;
        let st = dev.vgpu().engines().stats().unwrap_or_default();
        render_total += st.engine_ns.get(Engine::Rcs.index()).copied().unwrap_or(0);
        stats.push((tally, st));
    }
    // The vGPUs that keep the engine busy share what the frames left by weight.
    let rcs_of = |st: &crate::sched::VgpuStats| st.engine_ns.get(Engine::Rcs.index()).copied().unwrap_or(0);
    let (mut framed_ns, mut busy_w) = (0u64, 0u64);
    for (((_, _, role, _), (_, st)), &w) in devs.iter().zip(&stats).zip(&weights) {
        if *role == Role::Frames {
            framed_ns += rcs_of(st);
        } else {
            busy_w += u64::from(w);
        }
    }
    let left = 1.0 - framed_ns as f64 / render_total.max(1) as f64;
    let live = gpu.list();
    let mut vgpus = Vec::new();
    for (((dev, _, role, _), (tally, st)), &weight) in devs.iter().zip(stats).zip(&weights) {
        let p = dev.vgpu().params();
        let us = |p: f64| st.latency_percentile(p).unwrap_or(0) as f64 / 1000.0;
        let (p50, p99) = (us(50.0), us(99.0));
        let ty = live.iter().find(|v| v.id == p.id).map(|v| v.ty.clone()).unwrap_or_default();
        // A frame vGPU runs render work only, one workload at a time: its last engine-time
        // latencies are its frames'.
        let el = &st.engine_latencies_ns;
        let skip = el.len().saturating_sub(tally.frames.len());
        let frames = tally
            .frames
            .iter()
            .zip(el.iter().skip(skip))
            .map(|(&(at, wall_ns), &engine_ns)| Frame { at, wall_ns, engine_ns })
            .collect();
        let expected_share = (*role != Role::Frames).then(|| left * f64::from(weight) / busy_w.max(1) as f64);
        vgpus.push(VgpuReport {
            id: p.id,
            ty,
            weight,
            role: *role,
            accepted: tally.accepted,
            completed: st.completed,
            failed: st.failed,
            cancelled: st.cancelled,
            engine_ns: st.engine_ns,
            render_share: rcs_of(&st) as f64 / render_total.max(1) as f64,
            expected_share,
            latency_us: (p50, p99),
            scanned_bytes: st.scanned_bytes,
            rejections: st.rejections,
            escapes: tally.escapes,
            frames,
        });
    }
    let engines = Engine::ALL
        .into_iter()
        .filter(|&e| cfg.platform.default_device().has_engine(e))
        .map(|engine| {
            let slices = gpu.scheduler().take_trace(engine);
            let busy_ns = slices.iter().map(|s| s.engine_ns).sum();
            EngineReport { engine, busy_ns, timeline: timeline(&slices, &ids) }
        })
        .collect();
    gpu.scheduler().set_trace(false);
    Ok(DemoReport {
        platform: cfg.platform,
        wall,
        vgpus,
        engines,
        frame_period: cfg.frame_period,
        preemption: cfg.preemption,
    })
}

impl DemoReport {
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let vgpus: Vec<_> = self
            .vgpus
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": v.id,
                    "type": v.ty,
                    "weight": v.weight,
                    "accepted": v.accepted,
                    "completed": v.completed,
                    "failed": v.failed,
                    "cancelled": v.cancelled,
                    "lost": v.lost(),
                    "engine_ns": Engine::ALL.iter().map(|e| (e.name(), v.engine_ns.get(e.index()).copied().unwrap_or(0))).collect::<BTreeMap<_, _>>(),
                    "role": match v.role { Role::Mix { .. } => "mix", Role::Frames => "frames", Role::Hog => "hog" },
                    "render_share": v.render_share,
                    "expected_share": v.expected_share,
                    "latency_us": { "p50": v.latency_us.0, "p99": v.latency_us.1 },
                    "scanned_bytes": v.scanned_bytes,
                    "scanned_mb_s": v.scanned_mb_s(self.wall),
                    "rejections": v.rejections,
                    "escapes": v.escapes.iter().map(|e| serde_json::json!({"attempt": e.attempt, "rejected": e.rejected, "reason": e.reason})).collect::<Vec<_>>(),
                    "frames": v.frames.iter().map(|f| serde_json::json!({"at_ms": f.at.as_secs_f64() * 1e3, "wall_us": f.wall_ns as f64 / 1e3, "engine_us": f.engine_ns as f64 / 1e3})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let engines: Vec<_> = self
            .engines
            .iter()
            .map(|e| serde_json::json!({"engine": e.engine.name(), "busy_ns": e.busy_ns, "timeline_ns": e.timeline}))
            .collect();
        serde_json::json!({
            "platform": self.platform.short_name(),
            "wall_s": self.wall.as_secs_f64(),
            "preemption": self.preemption,
            "frame_period_ms": self.frame_period.as_secs_f64() * 1e3,
            "vgpus": vgpus,
            "engines": engines,
        })
    }
}
