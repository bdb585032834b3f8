//! `mdev::vfio_user` against `vfio_user::Client` (the client cloud-hypervisor uses): config
//! space, BAR sizing, guest memory mapped by fd, MMIO, the reference guest driver submitting work
//! that completes and raises MSI on an eventfd, and a client that disconnects mid-work while
//! another keeps running.

#![cfg(feature = "vfio-user")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::AddrSpace;
use shadowgpu::guest::{Bus, Driver};
use shadowgpu::hw::{Engine, Platform};
use shadowgpu::mdev::vfio_user::serve;
use shadowgpu::mdev::{GpuManager, REGION_BAR0, REGION_CONFIG};
use vm_memory::{Bytes, GuestAddress};

#[path = "common/vu.rs"]
mod vu;
use vu::*;

#[test]
fn config_bars_dma_mmio_submission_and_msi_over_vfio_user() {
    let d = dir("main");
    let gpu = GpuManager::software(Platform::Skylake).unwrap();
    let sa = d.join("a.sock");
    let served = serve(&gpu, &sa, "GVTg_V5_8", false).unwrap();
    let (bus, mem, line, msis) = connect(&sa, &d, "ram-a");
    {
        let c = bus.0.lock();
        let r = c.region(REGION_CONFIG).unwrap();
        assert_eq!(r.size, 256);
        assert_eq!(c.region(REGION_BAR0).unwrap().size, 16 << 20);
        // (vfio_user 0.1.7's `Client::resettable` reads the RESET flag inverted; the reset itself
        // is exercised below.)
    }
    let mut b4 = [0u8; 4];
    bus.read(REGION_CONFIG, 0, &mut b4).unwrap();
    assert_eq!(u32::from_le_bytes(b4), 0x1912_8086);
    bus.write(REGION_CONFIG, 0x10, &u32::MAX.to_le_bytes()).unwrap();
    bus.read(REGION_CONFIG, 0x10, &mut b4).unwrap();
    assert_eq!(u32::from_le_bytes(b4), 0xff00_0004, "BAR0 sizing: 16 MiB, 64-bit");
    bus.write(REGION_CONFIG, 0x18, &u32::MAX.to_le_bytes()).unwrap();
    bus.read(REGION_CONFIG, 0x18, &mut b4).unwrap();
    assert_eq!(u32::from_le_bytes(b4), 0xf000_000c, "BAR2 sizing: 256 MiB prefetchable");
    assert_eq!(served.stats().mapped_regions.load(Ordering::SeqCst), 1);

    let mut g = Driver::probe(bus.clone(), mem.clone(), (1 << 20, RAM - (1 << 20)), line).unwrap();
    for e in [Engine::Rcs, Engine::Bcs, Engine::Vcs, Engine::Vecs] {
        let mut b = CmdBuf::new();
        b.store_dword(AddrSpace::Ppgtt, g.data_va() + 4 * e.index() as u64, 0xa0 + e.index() as u32).bb_end();
        let s = g.submit(e, &b).unwrap();
        g.wait(e, s, T).unwrap();
        let gpa = g.ppgtt_gpa(g.data_va() + 4 * e.index() as u64).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(gpa)).unwrap(), 0xa0 + e.index() as u32);
    }
    let t = std::time::Instant::now();
    while msis.load(Ordering::SeqCst) == 0 && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(msis.load(Ordering::SeqCst) > 0, "MSI arrived on the eventfd");
    // A device reset over the socket.
    bus.0.lock().reset().unwrap();
    bus.read(REGION_CONFIG, 0x10, &mut b4).unwrap();
    assert_eq!(u32::from_le_bytes(b4), 0x4, "BARs back to reset");
    drop(g);
    bus.0.lock().shutdown().unwrap();
    let unknown = served.stop();
    assert!(unknown.is_empty(), "{unknown:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_client_that_disconnects_mid_work_leaves_the_others_running() {
    let d = dir("disc");
    let gpu = GpuManager::software(Platform::CoffeeLake).unwrap();
    let (sa, sb) = (d.join("a.sock"), d.join("b.sock"));
    let a = serve(&gpu, &sa, "GVTg_V5_8", false).unwrap();
    let b = serve(&gpu, &sb, "GVTg_V5_8", false).unwrap();
    assert_eq!(gpu.list().len(), 2);
    let (bus_a, mem_a, line_a, _) = connect(&sa, &d, "ram-a");
    let mut ga = Driver::probe(bus_a.clone(), mem_a.clone(), (1 << 20, RAM - (1 << 20)), line_a).unwrap();
    {
        let (bus_b, mem_b, line_b, _) = connect(&sb, &d, "ram-b");
        let mut gb = Driver::probe(bus_b.clone(), mem_b, (1 << 20, RAM - (1 << 20)), line_b).unwrap();
        // B leaves a pile of work queued and goes away without waiting.
        for i in 0..200 {
            let mut c = CmdBuf::new();
            c.store_dword(AddrSpace::Ppgtt, gb.data_va(), i).bb_end();
            gb.submit(Engine::Rcs, &c).unwrap();
        }
        bus_b.0.lock().shutdown().unwrap();
    }
    // A keeps working meanwhile.
    for i in 0..50 {
        let mut c = CmdBuf::new();
        c.store_dword(AddrSpace::Ppgtt, ga.data_va(), i).bb_end();
        let s = ga.submit(Engine::Rcs, &c).unwrap();
        ga.wait(Engine::Rcs, s, T).unwrap();
    }
    assert_eq!(mem_a.read_obj::<u32>(GuestAddress(ga.ppgtt_gpa(ga.data_va()).unwrap())).unwrap(), 49);
    // B's socket released everything of that client and serves the next one.
    let t = std::time::Instant::now();
    while b.stats().clients.load(Ordering::SeqCst) == 0 && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(b.stats().clients.load(Ordering::SeqCst), 1);
    assert_eq!(b.stats().mapped_regions.load(Ordering::SeqCst), 0, "client memory unmapped");
    let (bus_b, mem_b, line_b, _) = connect(&sb, &d, "ram-b2");
    let mut gb = Driver::probe(bus_b.clone(), mem_b.clone(), (1 << 20, RAM - (1 << 20)), line_b).unwrap();
    let mut c = CmdBuf::new();
    c.store_dword(AddrSpace::Ppgtt, gb.data_va(), 77).bb_end();
    let s = gb.submit(Engine::Bcs, &c).unwrap();
    gb.wait(Engine::Bcs, s, T).unwrap();
    assert_eq!(mem_b.read_obj::<u32>(GuestAddress(gb.ppgtt_gpa(gb.data_va()).unwrap())).unwrap(), 77);
    bus_b.0.lock().shutdown().unwrap();
    bus_a.0.lock().shutdown().unwrap();
    drop((ga, gb));
    a.stop();
    b.stop();
    let _ = std::fs::remove_dir_all(&d);
}
