//! Preemption through the whole stack: guests driven by the reference driver on one software GPU,
//! a neighbour that runs long batches or endless loops on the render engine beside a victim.
//! Preemption is the host's business (the guests see the CSB events and results of unpreempted
//! runs), a looping neighbour gets no more than its share, and the victim's latency in engine
//! time stays within a couple of slices of what it is alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::AddrSpace::Ppgtt;
use shadowgpu::guest::Driver;
use shadowgpu::host::sim::SimConfig;
use shadowgpu::hw::{Engine, Platform};
use shadowgpu::mdev::GpuManager;
use shadowgpu::mm::GmLayout;
use shadowgpu::sched::SchedConfig;
use vm_memory::{Bytes, GuestAddress};

#[path = "common/vm.rs"]
mod vm;
use vm::*;

const SLICE_NS: u64 = 1_000_000;

/// `draws` 3DPRIMITIVEs of 24,000 vertices (50 us of engine time each), then a store of `value`.
fn draws(draws: usize, va: u64, value: u32) -> CmdBuf {
    let mut b = CmdBuf::new();
    for _ in 0..draws {
        b.raw(&[0x7b00_0005, 0, 24_000, 0, 1, 0, 0]);
    }
    b.store_dword(Ppgtt, va, value).bb_end();
    b
}

fn render_ns(dev: &Dev) -> u64 {
    dev.vgpu().engines().stats().unwrap().engine_ns[Engine::Rcs.index()]
}

#[test]
fn preemption_is_invisible_to_the_guests() {
    let cfg = SchedConfig { hang_timeout_ns: Some(5_000_000_000), ..SchedConfig::default() };
    let layout = GmLayout { aperture: 512 << 20, ..GmLayout::DESKTOP };
    let gpu = GpuManager::software_with(Platform::Skylake, layout, cfg).unwrap();
    let (dev_a, mem_a, mut a) = vm(&gpu);
    let (dev_b, mem_b, mut b) = vm(&gpu);
    let (_dev_c, mem_c, mut c) = vm(&gpu);
    // Both queue deep on the render engine while a third vGPU holds it: B 20 batches of 200
    // draws (10 ms each, ten slices), A 200 small workloads; A's slices then preempt B's batches.
    let release = hold(&mut c, &mem_c, Engine::Rcs);
    let (va, vb) = (a.data_va(), b.data_va());
    let mut last_b = 0;
    for i in 0..20u32 {
        last_b = b.submit(Engine::Rcs, &draws(200, vb + 4 * u64::from(i), 0xb000 + i)).unwrap();
    }
    let mut last_a = 0;
    for n in 0..200u32 {
        last_a = a.submit(Engine::Rcs, &draws(1, va + 4 * u64::from(n), n)).unwrap();
    }
    release();
    a.wait(Engine::Rcs, last_a, T).unwrap();
    b.wait(Engine::Rcs, last_b, T).unwrap();
    // Every result is what an unpreempted run leaves.
    for i in 0..20u32 {
        let got: u32 = mem_b.read_obj(GuestAddress(b.ppgtt_gpa(vb + 4 * u64::from(i)).unwrap())).unwrap();
        assert_eq!(got, 0xb000 + i);
    }
    for n in 0..200u32 {
        let got: u32 = mem_a.read_obj(GuestAddress(a.ppgtt_gpa(va + 4 * u64::from(n)).unwrap())).unwrap();
        assert_eq!(got, n);
    }
    let sb = dev_b.vgpu().engines().stats().unwrap();
    assert!(sb.preemptions >= 5, "the long batches were preempted ({} times)", sb.preemptions);
    assert_eq!((sb.completed, sb.failed), (20, 0));
    let sa = dev_a.vgpu().engines().stats().unwrap();
    assert_eq!((sa.completed, sa.failed), (200, 0));
    // The guests' CSBs: a context-complete event when a context ran out of work, never one for
    // a preemption (the lite restores of a deep queue aside, one per idle-to-active switch).
    for (g, subs) in [(&a, 200), (&b, 20)] {
        let c = g.completions(Engine::Rcs);
        assert!((1..=subs).contains(&c), "{c} completions for {subs} submissions");
    }
    assert_eq!(a.breadcrumb(Engine::Rcs).unwrap(), last_a);
    assert_eq!(b.breadcrumb(Engine::Rcs).unwrap(), last_b);
}

/// Keeps the render engine busy with workloads of `n` draws of 50 us until `stop`, `depth` in
/// flight.
fn saturate(
    mut g: Driver<Dev, Mem>,
    n: usize,
    depth: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Driver<Dev, Mem>> {
    std::thread::spawn(move || {
        let va = g.data_va();
        let mut seqs = std::collections::VecDeque::new();
        let mut i = 0u32;
        while !stop.load(Ordering::SeqCst) {
            seqs.push_back(g.submit(Engine::Rcs, &draws(n, va, i)).unwrap());
            i += 1;
            if seqs.len() > depth {
                let s = seqs.pop_front().unwrap();
                g.wait(Engine::Rcs, s, T).unwrap();
            }
        }
        while let Some(s) = seqs.pop_front() {
            g.wait(Engine::Rcs, s, T).unwrap();
        }
        g
    })
}

#[test]
fn an_endless_loop_beside_a_busy_victim_gets_only_its_share() {
    let gpu = GpuManager::software(Platform::Skylake).unwrap();
    let (dev_a, _mem_a, a) = vm(&gpu);
    let (dev_b, mem_b, mut b) = vm(&gpu);
    // B: a batch that jumps to itself, submitted again whenever its engine reset (its guest's
    // hang recovery) ends it.
    let loop_va = b.data_va() + 0x1000;
    let mut lp = CmdBuf::new();
    lp.noop(2).bb_start(Ppgtt, loop_va, false);
    mem_b.write_slice(&lp.to_bytes(), GuestAddress(b.ppgtt_gpa(loop_va).unwrap())).unwrap();
    let mut start = CmdBuf::new();
    start.bb_start(Ppgtt, loop_va, false);
    b.submit_ring(Engine::Rcs, &start).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let victim = saturate(a, 50, 4, stop.clone());
    // Measure over 400 ms of render engine time once both compete.
    std::thread::sleep(Duration::from_millis(50));
    let (a0, b0) = (render_ns(&dev_a), render_ns(&dev_b));
    let sched = gpu.scheduler();
    let busy0 = sched.engine_stats(Engine::Rcs).unwrap().busy_ns;
    while sched.engine_stats(Engine::Rcs).unwrap().busy_ns < busy0 + 400_000_000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (a1, b1) = (render_ns(&dev_a), render_ns(&dev_b));
    stop.store(true, Ordering::SeqCst);
    let _a = victim.join().unwrap();
    let (da, db) = ((a1 - a0) as f64, (b1 - b0) as f64);
    let share_a = da / (da + db);
    assert!((share_a - 0.5).abs() <= 0.02, "victim share {share_a:.4} (victim {da} ns, loop {db} ns)");
    assert!(db / (da + db) <= 0.52, "the loop took {:.4}", db / (da + db));
    let sb = dev_b.vgpu().engines().stats().unwrap();
    assert!(sb.preemptions > 100, "the loop was preempted at slice ends ({} times)", sb.preemptions);
    assert_eq!(dev_a.vgpu().engines().stats().unwrap().failed, 0);
}

/// The victim submits one small workload at a time and waits for it; returns its engine-time
/// latencies' 99th percentile.
fn victim_p99(dev: &Dev, g: &mut Driver<Dev, Mem>, n: usize) -> u64 {
    let va = g.data_va();
    let before = dev.vgpu().engines().stats().unwrap().engine_latencies_ns.len();
    for i in 0..n {
        let s = g.submit(Engine::Rcs, &draws(2, va, i as u32)).unwrap();
        g.wait(Engine::Rcs, s, T).unwrap();
    }
    let mut l = dev.vgpu().engines().stats().unwrap().engine_latencies_ns.split_off(before);
    l.sort_unstable();
    l[(l.len() - 1) * 99 / 100]
}

#[test]
fn the_victims_latency_beside_long_batches_stays_within_two_slices() {
    // In real time, so the victim's submissions land anywhere in the neighbour's batches.
    let sim = SimConfig { real_time: true, ..SimConfig::default() };
    let gpu = GpuManager::software_sim(Platform::Skylake, sim, SchedConfig::default()).unwrap();
    let (dev_a, _mem_a, mut a) = vm(&gpu);
    let alone = victim_p99(&dev_a, &mut a, 200);
    let (_dev_b, _mem_b, b) = vm(&gpu);
    let stop = Arc::new(AtomicBool::new(false));
    // Batches of 400 draws: 20 ms each, two queued.
    let hog = saturate(b, 400, 2, stop.clone());
    std::thread::sleep(Duration::from_millis(30));
    let beside = victim_p99(&dev_a, &mut a, 200);
    stop.store(true, Ordering::SeqCst);
    hog.join().unwrap();
    assert!(beside <= alone + 2 * SLICE_NS, "p99 engine-time latency {beside} ns beside a neighbour, {alone} ns alone");
}
