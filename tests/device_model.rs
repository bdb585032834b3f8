//! The reference guest driver brings vGPUs up through the frontend the way i915 does and runs
//! work on every engine of the software GPU; two vGPUs at once cannot see each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::AddrSpace;
use shadowgpu::guest::{Driver, IrqLine};
use shadowgpu::hw::{Engine, Platform};
use shadowgpu::mdev::{GpuManager, IrqTrigger, MdevDevice, IRQ_MSI};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = Arc<GuestMemoryMmap<()>>;
const RAM: u64 = 64 << 20;
const T: Duration = Duration::from_secs(10);

fn vm(gpu: &GpuManager, ty: &str) -> (MdevDevice<Mem>, Mem, IrqLine) {
    let mem: Mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    let dev = gpu.create(ty, mem.clone()).unwrap();
    let line = IrqLine::default();
    let l = line.clone();
    dev.set_irq(IRQ_MSI, Some(IrqTrigger::Callback(Arc::new(move || l.signal())))).unwrap();
    (dev, mem, line)
}

#[test]
fn i915_style_bring_up_and_work_on_every_engine() {
    for platform in [Platform::Skylake, Platform::Broadwell, Platform::CoffeeLake] {
        let gpu = GpuManager::software(platform).unwrap();
        let ty = gpu.types()[0].ty.name.clone();
        let (dev, mem, line) = vm(&gpu, &ty);
        let mut g = Driver::probe(&dev, mem.clone(), (1 << 20, RAM - (1 << 20)), line.clone()).unwrap();
        assert_eq!(g.pvinfo().id, dev.vgpu().params().id);
        assert_eq!(g.pvinfo().aperture, dev.vgpu().params().gm.windows.aperture);
        assert_eq!(g.engines(), platform.default_device().engines());
        assert_eq!(dev.vgpu().failsafe(), None);
        let data = g.data_va();
        let engines = g.engines();
        for (n, e) in Engine::ALL.into_iter().filter(|&e| engines.has(e)).enumerate() {
            let va = data + 64 * n as u64;
            let mut b = CmdBuf::new();
            b.store_dword(AddrSpace::Ppgtt, va, 0x1000 + n as u32).bb_end();
            let s = g.submit(e, &b).unwrap();
            g.wait(e, s, T).unwrap();
            let got: u32 = mem.read_obj(GuestAddress(g.ppgtt_gpa(va).unwrap())).unwrap();
            assert_eq!(got, 0x1000 + n as u32, "{platform} {e}");
        }
        // A blit on BCS: copy 64 pixels x 4 rows of 32 bpp (PPGTT addresses, as a full-PPGTT
        // guest's blits are).
        let (src, dst) = (data + 0x1_0000, data + 0x2_0000);
        let (src_gpa, dst_gpa) = (g.ppgtt_gpa(src).unwrap(), g.ppgtt_gpa(dst).unwrap());
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(src_gpa)).unwrap();
        let mut b = CmdBuf::new();
        b.xy_src_copy(dst, 256, src, 256, 64, 4).bb_end();
        let s = g.submit(Engine::Bcs, &b).unwrap();
        g.wait(Engine::Bcs, s, T).unwrap();
        let mut out = vec![0u8; 1024];
        mem.read_slice(&mut out, GuestAddress(dst_gpa)).unwrap();
        assert!(out == pattern, "{platform}: blit result differs");
        // Interrupts came as MSIs and the CSBs showed every completion.
        dev.vgpu().engines().wait_idle();
        g.handle_interrupt().unwrap();
        assert!(line.count() > 0);
        assert_eq!(g.completions(Engine::Bcs), 2, "{platform}");
        assert_eq!(g.completions(Engine::Rcs), 1, "{platform}");
        assert!(dev.vgpu().unknown_registers().is_empty(), "{:?}", dev.vgpu().unknown_registers());
    }
}

#[test]
fn many_submissions_wrap_the_ring_and_lite_restore() {
    let gpu = GpuManager::software(Platform::KabyLake).unwrap();
    let (dev, mem, line) = vm(&gpu, "GVTg_V5_4");
    let mut g = Driver::probe(&dev, mem.clone(), (1 << 20, RAM - (1 << 20)), line).unwrap();
    let va = g.data_va();
    let mut last = 0;
    for i in 0..600u32 {
        let mut b = CmdBuf::new();
        b.store_dword(AddrSpace::Ppgtt, va, i).bb_end();
        last = g.submit(Engine::Vecs, &b).unwrap();
        if i % 50 == 49 {
            g.wait(Engine::Vecs, last, T).unwrap();
        }
    }
    g.wait(Engine::Vecs, last, T).unwrap();
    assert_eq!(mem.read_obj::<u32>(GuestAddress(g.ppgtt_gpa(va).unwrap())).unwrap(), 599);
    let s = dev.vgpu().engines().stats().unwrap();
    assert_eq!((s.completed, s.failed), (600, 0));
}

#[test]
fn two_vgpus_cannot_see_each_other() {
    let gpu = GpuManager::software(Platform::Skylake).unwrap();
    let (da, ma, la) = vm(&gpu, "GVTg_V5_8");
    let (db, mb, lb) = vm(&gpu, "GVTg_V5_8");
    let mut a = Driver::probe(&da, ma.clone(), (1 << 20, RAM - (1 << 20)), la).unwrap();
    let mut b = Driver::probe(&db, mb.clone(), (1 << 20, RAM - (1 << 20)), lb).unwrap();
    assert_ne!(a.pvinfo().aperture, b.pvinfo().aperture);
    // A keeps a secret in its aperture.
    let (secret_gma, secret_gpa) = a.gm_alloc(4096).unwrap();
    ma.write_obj(0x5ec2_e7e7u32, GuestAddress(secret_gpa)).unwrap();
    // B copies from A's graphics address into its own memory. From a user batch the hardware
    // refuses a global-GTT copy (a command privilege violation): the copy's command is MI_NOOP.
    let (mine, mine_gpa) = b.gm_alloc(4096).unwrap();
    let mut cmds = CmdBuf::new();
    cmds.copy_mem_mem(AddrSpace::Ggtt, mine, AddrSpace::Ggtt, secret_gma);
    let mut batch = cmds.clone();
    batch.bb_end();
    let s = b.submit(Engine::Rcs, &batch).unwrap();
    b.wait(Engine::Rcs, s, T).unwrap();
    assert_eq!(mb.read_obj::<u32>(GuestAddress(mine_gpa)).unwrap(), 0);
    assert_eq!(db.vgpu().engines().stats().unwrap().dropped_commands, 1);
    // From its ring (privileged): rejected, B's engine hangs.
    b.submit_ring(Engine::Rcs, &cmds).unwrap_err();
    assert_eq!(mb.read_obj::<u32>(GuestAddress(mine_gpa)).unwrap(), 0);
    let rej = db.vgpu().engines().stats().unwrap().rejections;
    assert_eq!(rej.values().sum::<u64>(), 1, "{rej:?}");
    // B points a GTT entry of A's window at its own page: the entry stays A's.
    let gtt = shadowgpu::hw::bar0::GTT_OFFSET + secret_gma / 4096 * 8;
    let _ = db.write(shadowgpu::mdev::REGION_BAR0, gtt, &(mine_gpa | 1).to_le_bytes());
    let mut q = [0u8; 8];
    db.read(shadowgpu::mdev::REGION_BAR0, gtt, &mut q).unwrap();
    assert_eq!(u64::from_le_bytes(q), 0, "B does not own that entry");
    // A still works and still reads its secret through its own engine; B recovers after reset.
    let mut cmds = CmdBuf::new();
    cmds.copy_mem_mem(AddrSpace::Ppgtt, a.data_va(), AddrSpace::Ggtt, secret_gma);
    let s = a.submit_ring(Engine::Rcs, &cmds).unwrap();
    a.wait(Engine::Rcs, s, T).unwrap();
    assert_eq!(ma.read_obj::<u32>(GuestAddress(a.ppgtt_gpa(a.data_va()).unwrap())).unwrap(), 0x5ec2_e7e7);
    b.reset_engine(Engine::Rcs).unwrap();
    let mut ok = CmdBuf::new();
    ok.store_dword(AddrSpace::Ppgtt, b.data_va(), 9).bb_end();
    let s = b.submit(Engine::Rcs, &ok).unwrap();
    b.wait(Engine::Rcs, s, T).unwrap();
    assert_eq!(mb.read_obj::<u32>(GuestAddress(b.ppgtt_gpa(b.data_va()).unwrap())).unwrap(), 9);
}
