//! Mediation overhead per workload on the software GPU, from the ELSP write to the CSB entry and
//! interrupt, with the host backend's own time (the engine executing) excluded; and aggregate
//! throughput of 1, 8 and 32 vGPUs submitting together. Baseline: memcpy of the bytes mediation
//! copies for the workload (ring, batch and the blitter context image).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parking_lot::{Condvar, Mutex};
use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::{AddrSpace, Events, ScanLimits};
use shadowgpu::context::image::idx;
use shadowgpu::host::sim::{SimConfig, SimGpu};
use shadowgpu::hw::{Engine, Gen};
use shadowgpu::mm::{GmAllocator, GmLayout, GmRequest, HostReserve};
use shadowgpu::sched::{SchedConfig, Scheduler};
use shadowgpu::vgpu::{VgpuConfig, VgpuEngines};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GM_GPA: u64 = 0x10_0000;
const PML4: u64 = 0x40_0000;
const VA: u64 = 0x1_0000_0000;
const PT_GPA: u64 = 0x60_0000;
/// Bytes mediation copies per nop workload: a 16-byte ring, an 8-byte batch, and the blitter's
/// 2-page context (register state read, engine state written back).
const COPIED: usize = 16 + 8 + 2 * 4096;

/// Completions (user interrupts) of one guest, and a condition to sleep on.
#[derive(Default)]
struct Done {
    count: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
}

struct Guest {
    mem: GuestMemoryMmap<()>,
    vgpu: VgpuEngines<Arc<GuestMemoryMmap<()>>>,
    base: u64,
    done: Arc<Done>,
    tail: u32,
    submitted: u64,
}

impl Guest {
    fn new(id: u32, sched: &Arc<Scheduler>, gm: &mut GmAllocator) -> Guest {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let a = gm.allocate(GmRequest { aperture: 2 << 20, hidden: 2 << 20, fences: 0 }).unwrap();
        let done = Arc::new(Done::default());
        let d = done.clone();
        let cfg = VgpuConfig { id, gen: Gen::Gen9, windows: a.windows, limits: ScanLimits::default(), weight: 4 };
        let vgpu = VgpuEngines::new(cfg, Arc::new(mem.clone()), sched.clone(), move |irq| {
            if irq.events.contains(Events::USER_INTERRUPT) {
                d.count.fetch_add(1, Ordering::Release);
                let _g = d.lock.lock();
                d.cv.notify_all();
            }
        })
        .unwrap();
        let base = a.windows.aperture.base;
        for i in 0..64u64 {
            vgpu.write_gtt((base / 4096 + i) * 8, 8, (GM_GPA + i * 4096) | 1).unwrap();
        }
        let q = |a: u64, v: u64| mem.write_obj(v, GuestAddress(a)).unwrap();
        q(PML4, (PML4 + 0x1000) | 3);
        q(PML4 + 0x1000 + 8 * 4, (PML4 + 0x2000) | 3);
        q(PML4 + 0x2000, (PML4 + 0x3000) | 3);
        q(PML4 + 0x3000, PT_GPA | 3);
        // The batch: MI_NOOP, MI_BATCH_BUFFER_END.
        mem.write_slice(&CmdBuf::new().noop(1).bb_end().to_bytes(), GuestAddress(PT_GPA)).unwrap();
        // A 4 KiB ring of batch starts (4 dwords each with padding), the context at +0x1000.
        let mut ring = CmdBuf::new();
        for _ in 0..256 {
            ring.bb_start(AddrSpace::Ppgtt, VA, false).user_interrupt();
        }
        mem.write_slice(&ring.to_bytes(), GuestAddress(GM_GPA)).unwrap();
        let state = GM_GPA + 0x2000;
        for (i, v) in [(idx::RING_START, base as u32), (idx::RING_CTL, 1), (idx::PDP3_UDW + 14, PML4 as u32)] {
            mem.write_obj(v, GuestAddress(state + 4 * i as u64)).unwrap();
        }
        Guest { mem, vgpu, base, done, tail: 0, submitted: 0 }
    }

    /// Submits one workload: the ring advances by one batch start.
    fn submit(&mut self) {
        self.submitted += 1;
        self.tail = (self.tail + 16) % 4096;
        let state = GM_GPA + 0x2000;
        self.mem.write_obj(self.tail, GuestAddress(state + 4 * idx::RING_TAIL as u64)).unwrap();
        let desc = (self.base + 0x1000) | (3 << 3) | (1 << 8) | 1;
        for v in [0, 0, 1, desc as u32] {
            self.vgpu.write_elsp(Engine::Bcs, v).unwrap();
        }
    }

    /// Submits and spins until the workload's completion interrupt.
    fn round_trip(&mut self) {
        self.submit();
        while self.done.count.load(Ordering::Acquire) < self.submitted {
            std::hint::spin_loop();
        }
    }

    /// Keeps at most `depth` workloads outstanding, sleeping while the engine works.
    fn pipelined(&mut self, n: u64, depth: u64) {
        let end = self.submitted + n;
        while self.submitted < end {
            let mut g = self.done.lock.lock();
            while self.submitted - self.done.count.load(Ordering::Acquire) >= depth {
                self.done.cv.wait(&mut g);
            }
            drop(g);
            self.submit();
        }
        let mut g = self.done.lock.lock();
        while self.done.count.load(Ordering::Acquire) < self.submitted {
            self.done.cv.wait(&mut g);
        }
    }
}

fn setup(n: u32) -> (Arc<Scheduler>, Vec<Guest>) {
    let sched = Arc::new(Scheduler::new(Arc::new(SimGpu::new(SimConfig::default())), SchedConfig::default()));
    let mut gm = GmAllocator::new(GmLayout::DESKTOP, HostReserve::default()).unwrap();
    let guests = (1..=n).map(|id| Guest::new(id, &sched, &mut gm)).collect();
    (sched, guests)
}

fn overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("overhead");
    g.throughput(Throughput::Bytes(COPIED as u64));
    let src = vec![7u8; COPIED];
    let mut dst = vec![0u8; COPIED];
    g.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    let (_sched, mut guests) = setup(1);
    let guest = &mut guests[0];
    g.bench_function("elsp_to_csb_nop_engine_time_excluded", |b| {
        b.iter_custom(|iters| {
            let host_before = guest.vgpu.stats().unwrap().host_wall_ns;
            let t0 = Instant::now();
            for _ in 0..iters {
                guest.round_trip();
            }
            let total = t0.elapsed();
            let host = guest.vgpu.stats().unwrap().host_wall_ns - host_before;
            total.saturating_sub(Duration::from_nanos(host))
        })
    });
    g.finish();
}

/// `n` vGPUs each submitting `per` workloads from its own thread, two outstanding at a time
/// (the virtual execlist's running and pending slots); returns when all completed.
fn run_together(guests: &mut [Guest], per: u64) {
    std::thread::scope(|s| {
        for guest in guests.iter_mut() {
            s.spawn(move || guest.pipelined(per, 2));
        }
    });
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("throughput");
    const TOTAL: u64 = 3_200;
    g.throughput(Throughput::Elements(TOTAL));
    g.sample_size(10);
    for n in [1u32, 8, 32] {
        let (_sched, mut guests) = setup(n);
        g.bench_function(format!("{n}_vgpus"), |b| b.iter(|| run_together(&mut guests, TOTAL / u64::from(n))));
    }
    g.finish();
}

criterion_group!(benches, overhead, throughput);
criterion_main!(benches);
