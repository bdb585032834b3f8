//! Batch contents as of when the engine reaches them, through the whole stack: guests driven by
//! the reference driver on one software GPU. A batch written by the guest's earlier GPU work (on
//! the same engine, or on another engine the ring waits for) or by its CPU while the engine loops
//! in it runs as the hardware would run it, not as it was when the guest submitted it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::time::{Duration, Instant};

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::AddrSpace::Ppgtt;
use shadowgpu::guest::Driver;
use shadowgpu::hw::{Engine, Platform};
use shadowgpu::mdev::GpuManager;
use shadowgpu::mm::GmLayout;
use shadowgpu::sched::SchedConfig;
use vm_memory::{Bytes, GuestAddress};

#[path = "common/vm.rs"]
mod vm;
use vm::*;

/// MI_ARB_CHECK.
const ARB_CHECK: u32 = 0x0280_0000;
/// MI_BATCH_BUFFER_END.
const BB_END: u32 = 0x0500_0000;

fn gpu() -> GpuManager {
    // A long hang limit: the loops below run until the test's CPU ends them.
    let cfg = SchedConfig { hang_timeout_ns: Some(5_000_000_000), ..SchedConfig::default() };
    GpuManager::software_with(Platform::Skylake, GmLayout { aperture: 512 << 20, ..GmLayout::DESKTOP }, cfg).unwrap()
}

fn put(mem: &Mem, g: &Driver<Dev, Mem>, va: u64, b: &CmdBuf) {
    mem.write_slice(&b.to_bytes(), GuestAddress(g.ppgtt_gpa(va).unwrap())).unwrap();
}

fn r32(mem: &Mem, g: &Driver<Dev, Mem>, va: u64) -> u32 {
    mem.read_obj(GuestAddress(g.ppgtt_gpa(va).unwrap())).unwrap()
}

/// A batch at `va` that stores `value` at `result`; returns the address of its value dword.
fn store_batch(mem: &Mem, g: &Driver<Dev, Mem>, va: u64, result: u64, value: u32) -> u64 {
    let mut b = CmdBuf::new();
    b.store_dword(Ppgtt, result, value).bb_end();
    put(mem, g, va, &b);
    va + 12
}

#[test]
fn a_batch_holds_what_the_same_engines_earlier_work_wrote_into_it() {
    let gpu = gpu();
    let (_da, mem, mut a) = vm(&gpu);
    let (_dc, mem_c, mut c) = vm(&gpu);
    let data = a.data_va();
    let (y, result) = (data + 0x1000, data + 0x3000);
    let value_at = store_batch(&mem, &a, y, result, 0x01d);
    // While another vGPU holds the engine, A queues a batch that rewrites Y's value, then Y.
    let release = hold(&mut c, &mem_c, Engine::Rcs);
    let mut x = CmdBuf::new();
    x.store_dword(Ppgtt, value_at, 0x2e0).bb_end();
    a.submit(Engine::Rcs, &x).unwrap();
    let mut ring = CmdBuf::new();
    ring.bb_start(Ppgtt, y, false);
    let s = a.submit_ring(Engine::Rcs, &ring).unwrap();
    release();
    a.wait(Engine::Rcs, s, T).unwrap();
    assert_eq!(r32(&mem, &a, result), 0x2e0, "Y ran as X left it, not as it was submitted");
}

#[test]
fn a_batch_holds_what_another_engine_wrote_before_the_ring_waited_for_it() {
    let gpu = gpu();
    let (_da, mem, mut a) = vm(&gpu);
    let (_dc, mem_c, mut c) = vm(&gpu);
    let data = a.data_va();
    let (y, flag, result) = (data + 0x1000, data + 0x2000, data + 0x3000);
    let value_at = store_batch(&mem, &a, y, result, 0x01d);
    mem.write_obj(0u32, GuestAddress(a.ppgtt_gpa(flag).unwrap())).unwrap();
    // The render ring waits for the copy engine's flag, then starts Y: submitted first.
    let mut ring = CmdBuf::new();
    ring.semaphore_wait(Ppgtt, flag, 1).bb_start(Ppgtt, y, false);
    let s = a.submit_ring(Engine::Rcs, &ring).unwrap();
    // The copy engine (held by another vGPU until now) rewrites Y, then raises the flag.
    let release = hold(&mut c, &mem_c, Engine::Bcs);
    let mut x = CmdBuf::new();
    x.store_dword(Ppgtt, value_at, 0x2e0).store_dword(Ppgtt, flag, 1).bb_end();
    a.submit(Engine::Bcs, &x).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    release();
    a.wait(Engine::Rcs, s, T).unwrap();
    assert_eq!(r32(&mem, &a, result), 0x2e0, "Y ran as the copy engine left it");
}

#[test]
fn a_looping_batch_sees_the_cpu_end_it() {
    // IGT's spinner: a batch that jumps to itself until the CPU writes MI_BATCH_BUFFER_END into
    // it. A preamble raises a flag first, so the CPU ends the loop while the engine is in it.
    let gpu = gpu();
    let (dev, mem, mut a) = vm(&gpu);
    let data = a.data_va();
    let (spin, flag) = (data + 0x1000, data + 0x2000);
    mem.write_obj(0u32, GuestAddress(a.ppgtt_gpa(flag).unwrap())).unwrap();
    let mut l = CmdBuf::new();
    l.raw(&[0, ARB_CHECK]).bb_start(Ppgtt, spin, false);
    put(&mem, &a, spin, &l);
    let mut pre = CmdBuf::new();
    pre.store_dword(Ppgtt, flag, 1).bb_start(Ppgtt, spin, false);
    let mut ring = CmdBuf::new();
    ring.bb_start(Ppgtt, data, false);
    put(&mem, &a, data, &pre);
    let s = a.submit_ring(Engine::Rcs, &ring).unwrap();
    let t0 = Instant::now();
    while r32(&mem, &a, flag) != 1 {
        assert!(t0.elapsed() < T, "the spinner never started");
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(5));
    mem.write_obj(BB_END, GuestAddress(a.ppgtt_gpa(spin).unwrap())).unwrap();
    a.wait(Engine::Rcs, s, T).unwrap();
    let st = dev.vgpu().engines().stats().unwrap();
    assert_eq!((st.failed, st.rejections.values().sum::<u64>()), (0, 0), "{:?}", st.last_failure);
}
