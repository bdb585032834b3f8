//! End to end on the software GPU: guest context and page tables in guest memory, ELSP writes,
//! scan, shadow context, scheduler, execution, write-back, CSB and interrupts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;

use parking_lot::Mutex;
use shadowgpu::cmd::emit::{CmdBuf, PostSync};
use shadowgpu::cmd::{AddrSpace, Events, ScanLimits};
use shadowgpu::context::image::idx;
use shadowgpu::execlist::{reg, CsbStatus};
use shadowgpu::host::sim::{SimConfig, SimGpu};
use shadowgpu::hw::{Engine, Gen};
use shadowgpu::mm::{GmAllocator, GmLayout, GmRequest, HostReserve};
use shadowgpu::sched::{SchedConfig, Scheduler};
use shadowgpu::vgpu::{EngineIrq, VgpuConfig, VgpuEngines, VgpuError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory behind the first 1 MiB of the aperture window: gpa = GM_GPA + (gma - base).
const GM_GPA: u64 = 0x10_0000;
const PML4: u64 = 0x40_0000;
/// PPGTT: VA..VA+2 MiB maps gpa PT_GPA..PT_GPA+2 MiB.
const VA: u64 = 0x1_0000_0000;
const PT_GPA: u64 = 0x60_0000;

struct Guest {
    mem: GuestMemoryMmap<()>,
    vgpu: VgpuEngines<Arc<GuestMemoryMmap<()>>>,
    base: u64,
    irqs: Arc<Mutex<Vec<EngineIrq>>>,
}

fn w32(mem: &GuestMemoryMmap<()>, gpa: u64, dws: &[u32]) {
    for (i, d) in dws.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(gpa + 4 * i as u64)).unwrap();
    }
}

impl Guest {
    fn new(id: u32, sched: &Arc<Scheduler>, gm: &mut GmAllocator) -> Guest {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let a = gm.allocate(GmRequest { aperture: 64 << 20, hidden: 128 << 20, fences: 4 }).unwrap();
        let irqs = Arc::new(Mutex::new(Vec::new()));
        let i2 = irqs.clone();
        let cfg = VgpuConfig { id, gen: Gen::Gen9, windows: a.windows, limits: ScanLimits::default(), weight: 4 };
        let vgpu = VgpuEngines::new(cfg, Arc::new(mem.clone()), sched.clone(), move |irq| i2.lock().push(irq)).unwrap();
        let base = a.windows.aperture.base;
        for i in 0..256u64 {
            vgpu.write_gtt((base / 4096 + i) * 8, 8, (GM_GPA + i * 4096) | 1).unwrap();
        }
        // Page tables: PML4[0] -> PDP, PDP[4] -> PD (VA 4 GiB), PD[0] -> PT -> PT_GPA..
        let q = |a: u64, v: u64| mem.write_obj(v, GuestAddress(a)).unwrap();
        q(PML4, (PML4 + 0x1000) | 3);
        q(PML4 + 0x1000 + 8 * 4, (PML4 + 0x2000) | 3);
        q(PML4 + 0x2000, (PML4 + 0x3000) | 3);
        for i in 0..512 {
            q(PML4 + 0x3000 + 8 * i, (PT_GPA + i * 4096) | 3);
        }
        Guest { mem, vgpu, base, irqs }
    }

    fn gpa(&self, gma: u64) -> u64 {
        GM_GPA + (gma - self.base)
    }

    /// Writes a context for `engine` at GGTT `lrca` whose ring (at `ring`) holds `cmds`, and
    /// submits it.
    fn submit(&self, engine: Engine, lrca: u64, ring: u64, cmds: &CmdBuf) -> Result<(), VgpuError> {
        let mut c = cmds.clone();
        c.align_qword();
        self.mem.write_slice(&c.to_bytes(), GuestAddress(self.gpa(ring))).unwrap();
        let state = self.gpa(lrca) + 4096;
        let put = |i: usize, v: u32| w32(&self.mem, state + 4 * i as u64, &[v]);
        put(idx::RING_START, ring as u32);
        put(idx::RING_CTL, 1);
        put(idx::RING_TAIL, c.len_bytes() as u32);
        put(idx::PDP3_UDW + 14, PML4 as u32);
        let desc = lrca | (3 << 3) | (1 << 8) | 1;
        for v in [0, 0, 0x42, desc as u32] {
            self.vgpu.write_elsp(engine, v)?;
        }
        Ok(())
    }
}

fn setup() -> (Arc<Scheduler>, GmAllocator) {
    let gpu = Arc::new(SimGpu::new(SimConfig::default()));
    let sched = Arc::new(Scheduler::new(gpu, SchedConfig::default()));
    (sched, GmAllocator::new(GmLayout::DESKTOP, HostReserve::default()).unwrap())
}

#[test]
fn a_render_workload_runs_and_completes_like_hardware() {
    let (sched, mut gm) = setup();
    let g = Guest::new(1, &sched, &mut gm);
    let (ring, lrca, hws) = (g.base, g.base + 0x1_0000, g.base + 0x3_0000);
    g.vgpu.set_hws_pga(Engine::Rcs, hws).unwrap();
    let mut batch = CmdBuf::new();
    batch.store_dword(AddrSpace::Ppgtt, VA + 0x1000, 0xabcd);
    batch.pipe_control(0, PostSync::WriteImmediate, AddrSpace::Ppgtt, VA + 0x1008, 0x1122_3344_5566, false);
    batch.bb_end();
    g.mem.write_slice(&batch.to_bytes(), GuestAddress(PT_GPA + 0x8000)).unwrap();
    let mut cmds = CmdBuf::new();
    cmds.bb_start(AddrSpace::Ppgtt, VA + 0x8000, false).user_interrupt();
    g.submit(Engine::Rcs, lrca, ring, &cmds).unwrap();
    g.vgpu.wait_idle();

    assert_eq!(g.mem.read_obj::<u32>(GuestAddress(PT_GPA + 0x1000)).unwrap(), 0xabcd);
    assert_eq!(g.mem.read_obj::<u64>(GuestAddress(PT_GPA + 0x1008)).unwrap(), 0x1122_3344_5566);
    // Write-back: the guest's RING_HEAD reached the tail.
    let head: u32 = g.mem.read_obj(GuestAddress(g.gpa(lrca) + 4096 + 4 * idx::RING_HEAD as u64)).unwrap();
    assert_eq!(head & 0x1f_fffc, 16);
    // CSB: idle-to-active, then complete and idle, in registers and in the status page.
    let csb_ptr = g.vgpu.read_execlist(Engine::Rcs, reg::CSB_PTR).unwrap();
    assert_eq!(csb_ptr & 7, 1, "two entries written");
    let e1 = g.vgpu.read_execlist(Engine::Rcs, reg::CSB + 8).unwrap();
    assert_eq!(e1, (CsbStatus::ACTIVE_TO_IDLE | CsbStatus::CONTEXT_COMPLETE).bits());
    assert_eq!(g.vgpu.read_execlist(Engine::Rcs, reg::CSB + 12).unwrap(), 0x42);
    let hwsp_e1: u32 = g.mem.read_obj(GuestAddress(g.gpa(hws) + 4 * (0x10 + 2))).unwrap();
    assert_eq!(hwsp_e1, e1);
    let irqs = g.irqs.lock().clone();
    assert_eq!(irqs.len(), 2);
    assert!(irqs[1].context_switch && irqs[1].events.contains(Events::USER_INTERRUPT));
    let s = g.vgpu.stats().unwrap();
    assert_eq!((s.completed, s.failed), (1, 0));
    assert!(s.engine_ns[Engine::Rcs.index()] > 0);
}

#[test]
fn a_blit_copies_between_guest_buffers() {
    let (sched, mut gm) = setup();
    let g = Guest::new(1, &sched, &mut gm);
    for i in 0..1024u64 {
        g.mem.write_obj(i as u32 * 7, GuestAddress(PT_GPA + 0x2_0000 + 4 * i)).unwrap();
    }
    let mut cmds = CmdBuf::new();
    cmds.xy_src_copy(VA + 0x4_0000, 256, VA + 0x2_0000, 256, 64, 16);
    g.submit(Engine::Bcs, g.base + 0x1_0000, g.base, &cmds).unwrap();
    g.vgpu.wait_idle();
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    g.mem.read_slice(&mut a, GuestAddress(PT_GPA + 0x2_0000)).unwrap();
    g.mem.read_slice(&mut b, GuestAddress(PT_GPA + 0x4_0000)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn an_escape_is_rejected_and_the_other_vgpu_is_untouched() {
    let (sched, mut gm) = setup();
    let good = Guest::new(1, &sched, &mut gm);
    let bad = Guest::new(2, &sched, &mut gm);
    // vGPU 2 stores into vGPU 1's aperture window through the GGTT.
    let victim = good.base + 0x5_0000;
    let mut evil = CmdBuf::new();
    evil.store_dword(AddrSpace::Ggtt, victim, 0xbad);
    let e = bad.submit(Engine::Bcs, bad.base + 0x1_0000, bad.base, &evil).unwrap_err();
    assert!(matches!(e, VgpuError::Rejected { engine: Engine::Bcs, .. }), "{e}");
    assert_eq!(bad.vgpu.stats().unwrap().rejections.get("command scan"), Some(&1));
    // Until the guest resets the engine, it stays hung: a submission is latched, as the hardware
    // latches an ELSP write behind a context that never completes, and runs nothing.
    let mut latched = CmdBuf::new();
    latched.store_dword(AddrSpace::Ppgtt, VA + 0x20, 9);
    bad.submit(Engine::Bcs, bad.base + 0x1_0000, bad.base, &latched).unwrap();
    bad.vgpu.wait_idle();
    assert_eq!(bad.mem.read_obj::<u32>(GuestAddress(PT_GPA + 0x20)).unwrap(), 0, "ran on a hung engine");
    assert_eq!(bad.vgpu.stats().unwrap().rejections.get("engine hung: submission before reset"), Some(&1));
    bad.vgpu.reset_engines(Engine::Bcs.mask()).unwrap();

    let mut ok = CmdBuf::new();
    ok.store_dword(AddrSpace::Ggtt, victim, 0x600d);
    good.submit(Engine::Bcs, good.base + 0x1_0000, good.base, &ok).unwrap();
    good.vgpu.wait_idle();
    assert_eq!(good.mem.read_obj::<u32>(GuestAddress(good.gpa(victim))).unwrap(), 0x600d);
    let mut fine = CmdBuf::new();
    fine.store_dword(AddrSpace::Ppgtt, VA + 0x10, 5);
    bad.submit(Engine::Bcs, bad.base + 0x1_0000, bad.base, &fine).unwrap();
    bad.vgpu.wait_idle();
    assert_eq!(bad.mem.read_obj::<u32>(GuestAddress(PT_GPA + 0x10)).unwrap(), 5);
    assert_eq!(good.mem.read_obj::<u32>(GuestAddress(PT_GPA + 0x10)).unwrap(), 0, "separate memories");
}

#[test]
fn resubmitting_a_running_context_continues_its_ring() {
    let (sched, mut gm) = setup();
    let g = Guest::new(1, &sched, &mut gm);
    let (ring, lrca) = (g.base, g.base + 0x1_0000);
    // Three submissions of one context, each adding a store to the ring (tail grows): whether
    // they meet as lite restores or run one by one, each store runs exactly once.
    let mut cmds = CmdBuf::new();
    for i in 0..3u64 {
        cmds.raw(&[0x1780_0001 | 5 << 8, (VA + 0x100) as u32, (VA >> 32) as u32]); // MI_ATOMIC INC
        cmds.store_dword(AddrSpace::Ppgtt, VA + 0x200 + 4 * i, i as u32 + 1).noop(1);
        let c = cmds.clone();
        // Only the new part runs: the head resumes at the previous tail.
        g.submit(Engine::Bcs, lrca, ring, &c).unwrap();
    }
    g.vgpu.wait_idle();
    assert_eq!(g.mem.read_obj::<u32>(GuestAddress(PT_GPA + 0x100)).unwrap(), 3, "each command ran once");
    for i in 0..3u64 {
        assert_eq!(g.mem.read_obj::<u32>(GuestAddress(PT_GPA + 0x200 + 4 * i)).unwrap(), i as u32 + 1);
    }
    let s = g.vgpu.stats().unwrap();
    assert_eq!((s.completed, s.failed), (3, 0));
    // The engine is idle from the guest's view (no context running) and accepts more work.
    assert_eq!(g.vgpu.read_execlist(Engine::Bcs, reg::STATUS_HI), Some(0));
    g.submit(Engine::Bcs, lrca, ring, &cmds).unwrap();
}
