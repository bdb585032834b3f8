//! Latency isolation: a victim vGPU's render workload latency, submission to completion, alone,
//! beside a vGPU keeping long batches queued (heavy draws, 20 ms of engine time each), and beside
//! a vGPU running endless loops (a self-jumping batch, resubmitted after each engine reset, as the
//! attacker of issue 15 did). The software GPU runs no faster than real time, so engine time and
//! wall time agree and a neighbour's long batch holds the engine as long as it would on hardware.
//! Baseline in the same run: memcpy of the victim's batch bytes.
//!
//! Criterion measures the victim's round trips; after each case the bench prints the victim's
//! p50/p99 latency (wall and engine time, from the scheduler's statistics), and a second phase
//! with the victim keeping the engine busy prints both vGPUs' share of the engine.
//!
//! `cargo bench --bench latency`; with `SHADOWGPU_BENCH_BUSY_THREADS=N` N more threads spin on
//! the CPU throughout. Figures go to docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::{mix, AddrSpace};
use shadowgpu::guest::{Driver, GuestError, IrqLine};
use shadowgpu::host::sim::SimConfig;
use shadowgpu::hw::{Engine, Platform};
use shadowgpu::mdev::{GpuManager, IrqTrigger, MdevDevice, IRQ_MSI};
use shadowgpu::mm::GmLayout;
use shadowgpu::sched::{PolicyConfig, SchedConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = Arc<GuestMemoryMmap<()>>;
type Dev = Arc<MdevDevice<Mem>>;
type Guest = Driver<Dev, Mem>;

const RAM: u64 = 32 << 20;
const T: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Neighbour {
    None,
    LongBatches,
    EndlessLoop,
}

impl Neighbour {
    fn name(self) -> &'static str {
        match self {
            Neighbour::None => "alone",
            Neighbour::LongBatches => "beside_long_batches",
            Neighbour::EndlessLoop => "beside_endless_loops",
        }
    }
}

fn vm(gpu: &GpuManager) -> (Dev, Guest) {
    let mem: Mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    let dev = Arc::new(gpu.create("GVTg_V5_8", mem.clone()).unwrap());
    let line = IrqLine::default();
    let l = line.clone();
    dev.set_irq(IRQ_MSI, Some(IrqTrigger::Callback(Arc::new(move || l.signal())))).unwrap();
    let g = Driver::probe(dev.clone(), mem, (1 << 20, RAM - (1 << 20)), line).unwrap();
    (dev, g)
}

/// The neighbour's guest: until `stop`, two 20 ms batches of heavy draws queued, or a
/// self-jumping batch resubmitted after each hang and engine reset.
fn neighbour(mut g: Guest, kind: Neighbour, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let va = g.data_va();
        match kind {
            Neighbour::None => {}
            Neighbour::LongBatches => {
                let batch = mix::render_batch_with(40, 249_000, va);
                let mut q = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    q.push_back(g.submit(Engine::Rcs, &batch).unwrap());
                    if q.len() >= 2 {
                        let s = q.pop_front().unwrap();
                        g.wait(Engine::Rcs, s, T).unwrap();
                    }
                }
                for s in q {
                    g.wait(Engine::Rcs, s, T).unwrap();
                }
            }
            Neighbour::EndlessLoop => {
                let loop_va = va + 0x1000;
                let mut lp = CmdBuf::new();
                lp.noop(2).bb_start(AddrSpace::Ppgtt, loop_va, false);
                g.memory().write_slice(&lp.to_bytes(), GuestAddress(g.ppgtt_gpa(loop_va).unwrap())).unwrap();
                let mut start = CmdBuf::new();
                start.bb_start(AddrSpace::Ppgtt, loop_va, false);
                while !stop.load(Ordering::Relaxed) {
                    let s = g.submit_ring(Engine::Rcs, &start).unwrap();
                    // It never completes: alone on the engine it hangs after the hang timeout;
                    // the guest notices, resets the engine through GDRST and submits again.
                    match g.wait(Engine::Rcs, s, Duration::from_millis(100)) {
                        Err(GuestError::Timeout { .. }) => g.reset_engine(Engine::Rcs).unwrap(),
                        r => r.unwrap(),
                    }
                }
                g.reset_engine(Engine::Rcs).unwrap();
            }
        }
    })
}

fn render_ns(dev: &Dev) -> u64 {
    dev.vgpu().engines().stats().unwrap().engine_ns[Engine::Rcs.index()]
}

fn percentile(v: &mut [u64], p: usize) -> u64 {
    v.sort_unstable();
    v.get((v.len().saturating_sub(1)) * p / 100).copied().unwrap_or(0)
}

fn spinners() -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
    let n: usize = std::env::var("SHADOWGPU_BENCH_BUSY_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let hs = (0..n)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    (stop, hs)
}

fn case(c: &mut Criterion, kind: Neighbour) {
    let sim = SimConfig { layout: GmLayout::DESKTOP, real_time: true, ..SimConfig::default() };
    let gpu = GpuManager::software_sim(Platform::Skylake, sim, SchedConfig::default()).unwrap();
    let (dev, mut victim) = vm(&gpu);
    let (ndev, ng) = vm(&gpu);
    // The victim's workload: eight draws of 1,536 vertices (about 45 us of engine time).
    let work = mix::render_batch_with(8, 1536, victim.data_va());
    let stop = Arc::new(AtomicBool::new(false));
    let handle = neighbour(ng, kind, stop.clone());
    std::thread::sleep(Duration::from_millis(50));
    let before = dev.vgpu().engines().stats().unwrap();
    let (n0, t0) = (before.latencies_ns.len(), before.engine_latencies_ns.len());

    let mut g = c.benchmark_group("victim_latency");
    g.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(work.len_bytes()));
    if kind == Neighbour::None {
        let src = work.to_bytes();
        let mut dst = vec![0u8; src.len()];
        g.bench_function("memcpy_baseline", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
    }
    g.bench_function(kind.name(), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let s = victim.submit(Engine::Rcs, &work).unwrap();
                victim.wait(Engine::Rcs, s, T).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();

    let st = dev.vgpu().engines().stats().unwrap();
    let mut wall: Vec<u64> = st.latencies_ns.get(n0..).unwrap_or(&[]).to_vec();
    let mut eng: Vec<u64> = st.engine_latencies_ns.get(t0..).unwrap_or(&[]).to_vec();
    let n = wall.len();
    let (w50, w99) = (percentile(&mut wall, 50), percentile(&mut wall, 99));
    let (e50, e99) = (percentile(&mut eng, 50), percentile(&mut eng, 99));
    println!(
        "latency {:<22} {n} workloads: wall p50 {:.1} us p99 {:.1} us; engine time p50 {:.1} us p99 {:.1} us",
        kind.name(),
        w50 as f64 / 1e3,
        w99 as f64 / 1e3,
        e50 as f64 / 1e3,
        e99 as f64 / 1e3
    );

    // Shares: the victim keeps four 50-draw workloads (about 0.25 ms each) queued; both weigh
    // the same. The first second of engine time lets the credit the victim saved while it waited
    // on each workload run out (the policy carries credit and debt up to a full reset each second
    // of engine time); the next half second is measured.
    if kind != Neighbour::None {
        let busy = mix::render_batch_with(50, 1536, victim.data_va());
        let sched = gpu.scheduler().clone();
        let busy_ns = || sched.engine_stats(Engine::Rcs).unwrap().busy_ns;
        let start = busy_ns();
        let mut q = std::collections::VecDeque::new();
        let mut mark = None;
        loop {
            let now = busy_ns();
            if mark.is_none() && now >= start + 1_000_000_000 {
                mark = Some((render_ns(&dev), render_ns(&ndev), now));
            }
            if mark.is_some_and(|(_, _, m)| now >= m + 500_000_000) {
                break;
            }
            q.push_back(victim.submit(Engine::Rcs, &busy).unwrap());
            if q.len() >= 4 {
                let s = q.pop_front().unwrap();
                victim.wait(Engine::Rcs, s, T).unwrap();
            }
        }
        let (a0, b0, _) = mark.unwrap();
        let (a1, b1) = (render_ns(&dev), render_ns(&ndev));
        for s in q {
            victim.wait(Engine::Rcs, s, T).unwrap();
        }
        let (da, db) = ((a1 - a0) as f64, (b1 - b0) as f64);
        println!(
            "share   {:<22} victim {:.2}%, neighbour {:.2}% (weights 1:1, target 50%)",
            kind.name(),
            100.0 * da / (da + db),
            100.0 * db / (da + db)
        );
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

fn latency(c: &mut Criterion) {
    println!("one time slice: {} us", PolicyConfig::default().slice_ns / 1000);
    let (stop, spin) = spinners();
    for kind in [Neighbour::None, Neighbour::LongBatches, Neighbour::EndlessLoop] {
        case(c, kind);
    }
    stop.store(true, Ordering::Relaxed);
    for h in spin {
        h.join().unwrap();
    }
}

criterion_group!(benches, latency);
criterion_main!(benches);
