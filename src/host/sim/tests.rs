//! Every command the software GPU executes, checked by the memory and registers it leaves.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::cmd::emit::{CmdBuf, PostSync};
use crate::cmd::{AddrSpace::Ggtt, AddrSpace::Ppgtt};
use crate::context::image::idx;
use crate::context::ShadowContext;
use crate::hw::lrc;
use crate::mm::ppgtt::{PpgttLimits, Revalidate};
use crate::mm::{PpgttRoot, ShadowPpgtt, ShadowRoot};

/// GGTT window mapped to guest memory [0, 4 MiB).
const WIN: u64 = 0x100_0000;
/// PPGTT addresses [VA, VA + 2 MiB) map guest memory [4 MiB, 6 MiB).
const VA: u64 = 0x4000_0000;
const VA_GPA: u64 = 0x40_0000;
const PML4: u64 = 0x80_0000;

struct Rig {
    gpu: SimGpu,
    guest: GuestMemoryMmap<()>,
    _vm: Box<dyn VgpuMemory>,
    root: ShadowRoot,
    ctx: ShadowContext,
    engine: Engine,
    _ppgtt: ShadowPpgtt,
}

fn rig_with(engine: Engine, cost: CostModel) -> Rig {
    rig_cfg(engine, SimConfig { cost, ..SimConfig::default() })
}

fn rig_cfg(engine: Engine, cfg: SimConfig) -> Rig {
    let gpu = SimGpu::new(cfg);
    let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let mut vm = gpu.attach_vgpu(Arc::new(guest.clone())).unwrap();
    let mut ggtt = vm.ggtt_writer();
    for i in 0..1024u64 {
        let h = vm.map_page(GuestAddress(i * 4096)).unwrap();
        ggtt.write_pte(WIN / 4096 + i, h | 1);
    }
    // Guest page tables: PML4[0] -> PDP, PDP[1] -> PD, PD[0] -> PT, PT[i] -> VA_GPA + i pages.
    let w = |a: u64, v: u64| guest.write_obj(v, GuestAddress(a)).unwrap();
    w(PML4, (PML4 + 0x1000) | 3);
    w(PML4 + 0x1000 + 8, (PML4 + 0x2000) | 3);
    w(PML4 + 0x2000, (PML4 + 0x3000) | 3);
    for i in 0..512 {
        w(PML4 + 0x3000 + 8 * i, (VA_GPA + i * 4096) | 3);
    }
    let mut ppgtt = ShadowPpgtt::new(&mut *vm, PpgttLimits::default(), Box::new(Revalidate)).unwrap();
    let root = ppgtt.pin(&guest, &mut *vm, PpgttRoot::L4(PML4)).unwrap();
    let ctx = ShadowContext::with_blank_clean(Gen::Gen9, engine);
    Rig { gpu, guest, _vm: vm, root, ctx, engine, _ppgtt: ppgtt }
}

fn rig(engine: Engine) -> Rig {
    rig_with(engine, CostModel::default())
}

impl Rig {
    /// Runs `ring` from the shadow context, with the shadow PPGTT as its root.
    fn run(&mut self, ring: &CmdBuf) -> Result<RunReport, HostError> {
        let mut w = super::testing::ring_workload(&mut self.ctx, &self.gpu.layout(self.engine), ring);
        let pml4 = self.root.pdps()[0];
        *self.ctx.image_dword_mut(1024 + idx::PDP3_UDW + 12).unwrap() = (pml4 >> 32) as u32;
        *self.ctx.image_dword_mut(1024 + idx::PDP3_UDW + 14).unwrap() = pml4 as u32;
        let job = HostJob::new(&mut w, None, &mut self.ctx, false);
        self.gpu.run(self.engine, job)
    }

    /// Guest dword at GGTT address `gma` of the window.
    fn ggtt32(&self, gma: u64) -> u32 {
        self.guest.read_obj(GuestAddress(gma - WIN)).unwrap()
    }

    fn ggtt64(&self, gma: u64) -> u64 {
        self.guest.read_obj(GuestAddress(gma - WIN)).unwrap()
    }

    fn ppgtt32(&self, va: u64) -> u32 {
        self.guest.read_obj(GuestAddress(va - VA + VA_GPA)).unwrap()
    }

    fn put(&self, gma: u64, c: &CmdBuf) {
        self.guest.write_slice(&c.to_bytes(), GuestAddress(gma - WIN)).unwrap();
    }

    fn reg(&self, r: u32) -> u32 {
        self.gpu.read_reg(self.engine, self.engine.mmio_base() + r)
    }
}

fn gpr(n: u32) -> u32 {
    Engine::Rcs.mmio_base() + reg::GPR0 + 8 * n
}

#[test]
fn store_data_imm_dword_and_qword_in_both_spaces() {
    let mut r = rig(Engine::Rcs);
    let mut c = CmdBuf::new();
    c.noop(3).store_dword(Ggtt, WIN + 0x100, 0xdead_beef).store_qword(Ggtt, WIN + 0x108, 0x1122_3344_5566_7788);
    c.store_dword(Ppgtt, VA + 0x2010, 77);
    let rep = r.run(&c).unwrap();
    assert_eq!(r.ggtt32(WIN + 0x100), 0xdead_beef);
    assert_eq!(r.ggtt64(WIN + 0x108), 0x1122_3344_5566_7788);
    assert_eq!(r.ppgtt32(VA + 0x2010), 77, "PPGTT stores land where the guest's tables say");
    assert_eq!(r.guest.read_obj::<u32>(GuestAddress(0x2010)).unwrap(), 0, "not at the GGTT alias");
    assert!(rep.commands >= 6 && rep.engine_ns > 0);
    assert_eq!(rep.bytes_moved, 16);
}

#[test]
fn a_real_time_engine_takes_the_wall_time_its_engine_time_says() {
    // Five draws of 500,000 vertices: 5 ms of engine time, computed in microseconds unless the
    // engine runs in real time.
    let mut c = CmdBuf::new();
    for _ in 0..5 {
        c.raw(&[0x7b00_0005, 0, 500_000, 0, 1, 0, 0]);
    }
    c.store_dword(Ggtt, WIN + 0x100, 1);
    let mut r = rig_cfg(Engine::Rcs, SimConfig { real_time: true, ..SimConfig::default() });
    let t0 = std::time::Instant::now();
    let rep = r.run(&c).unwrap();
    let wall = t0.elapsed().as_nanos() as u64;
    assert!(rep.engine_ns >= 5_000_000);
    assert!(wall + super::exec::PACE_SLACK_NS >= rep.engine_ns, "{wall} ns of wall time for {} ns", rep.engine_ns);
    assert_eq!(r.ggtt32(WIN + 0x100), 1);
}

#[test]
fn batches_two_levels_and_chains() {
    let mut r = rig(Engine::Rcs);
    let (b1, b2, chained) = (WIN + 0x1_0000, WIN + 0x1_1000, WIN + 0x1_2000);
    let t = WIN + 0x200;
    let mut l1 = CmdBuf::new();
    l1.store_dword(Ggtt, t, 1).bb_start(Ggtt, b2, true).store_dword(Ggtt, t + 8, 3).bb_start(Ggtt, chained, false);
    l1.store_dword(Ggtt, t + 12, 0xbad).bb_end();
    let mut l2 = CmdBuf::new();
    l2.store_dword(Ggtt, t + 4, 2).bb_end().store_dword(Ggtt, t + 4, 0xbad);
    let mut ch = CmdBuf::new();
    ch.store_dword(Ggtt, t + 16, 4).bb_end();
    r.put(b1, &l1);
    r.put(b2, &l2);
    r.put(chained, &ch);
    let mut ring = CmdBuf::new();
    ring.bb_start(Ggtt, b1, false).store_dword(Ggtt, t + 20, 5);
    r.run(&ring).unwrap();
    let got: Vec<u32> = (0..6).map(|i| r.ggtt32(t + 4 * i)).collect();
    assert_eq!(got, [1, 2, 3, 0, 4, 5], "level 2 returns, a chain does not, the ring resumes");
}

#[test]
fn ppgtt_batches_run_from_the_ppgtt() {
    let mut r = rig(Engine::Bcs);
    let mut b = CmdBuf::new();
    b.store_dword(Ppgtt, VA + 0x3000, 9).bb_end();
    r.guest.write_slice(&b.to_bytes(), GuestAddress(VA_GPA + 0x1000)).unwrap();
    let mut ring = CmdBuf::new();
    ring.bb_start(Ppgtt, VA + 0x1000, false);
    r.run(&ring).unwrap();
    assert_eq!(r.ppgtt32(VA + 0x3000), 9);
}

#[test]
fn conditional_batch_end() {
    let mut r = rig(Engine::Rcs);
    let (flag, t, b) = (WIN + 0x300, WIN + 0x400, WIN + 0x1_0000);
    // MI_CONDITIONAL_BATCH_BUFFER_END (GGTT): ends when *flag <= 5.
    let mut batch = CmdBuf::new();
    batch.raw(&[0x1b40_0002, 5, flag as u32, 0]).store_dword(Ggtt, t, 1).bb_end();
    r.put(b, &batch);
    let mut ring = CmdBuf::new();
    ring.bb_start(Ggtt, b, false);
    r.guest.write_obj(5u32, GuestAddress(flag - WIN)).unwrap();
    r.run(&ring).unwrap();
    assert_eq!(r.ggtt32(t), 0, "5 <= 5 ends the batch");
    r.guest.write_obj(6u32, GuestAddress(flag - WIN)).unwrap();
    r.run(&ring).unwrap();
    assert_eq!(r.ggtt32(t), 1, "6 > 5 continues");
}

#[test]
fn register_loads_and_stores() {
    let mut r = rig(Engine::Rcs);
    let (src, dst) = (WIN + 0x500, WIN + 0x600);
    r.guest.write_obj(0x1234_5678u32, GuestAddress(src - WIN)).unwrap();
    let mut c = CmdBuf::new();
    c.lri(&[(gpr(0), 11), (gpr(0) + 4, 12)]).lrr(gpr(0), gpr(1)).lrm(gpr(2), Ggtt, src);
    c.srm(gpr(1), Ggtt, dst).srm(gpr(2), Ggtt, dst + 4).srm(gpr(0) + 4, Ggtt, dst + 8);
    r.run(&c).unwrap();
    assert_eq!([r.ggtt32(dst), r.ggtt32(dst + 4), r.ggtt32(dst + 8)], [11, 0x1234_5678, 12]);
    assert_eq!(r.reg(reg::GPR0 + 8), 11);
}

#[test]
fn store_data_index_writes_the_status_page() {
    let mut r = rig(Engine::Bcs);
    // MI_STORE_DATA_INDEX to the per-process status page, dword 0x30.
    let mut c = CmdBuf::new();
    c.raw(&[0x1080_0001 | 1 << 21, 0x30 * 4, 0xfeed]);
    r.run(&c).unwrap();
    let mut b = [0u8; 4];
    r.gpu.memory().read_ggtt(r.gpu.context_area(Engine::Bcs) + 0xc0, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xfeed);
}

#[test]
fn flush_dw_and_pipe_control_post_sync_writes() {
    let mut r = rig(Engine::Rcs);
    let t = WIN + 0x700;
    let mut c = CmdBuf::new();
    c.pipe_control(0, PostSync::WriteImmediate, Ggtt, t, 0xaaaa_bbbb_cccc_dddd, true);
    c.pipe_control(0, PostSync::WriteTimestamp, Ggtt, t + 8, 0, false);
    c.pipe_control(0, PostSync::WriteImmediate, Ppgtt, VA + 0x40, 0x55, false);
    let rep = r.run(&c).unwrap();
    assert_eq!(r.ggtt64(t), 0xaaaa_bbbb_cccc_dddd);
    assert!(r.ggtt64(t + 8) > 0, "the timestamp advanced with engine time");
    assert_eq!(r.ppgtt32(VA + 0x40), 0x55);
    assert_eq!(rep.interrupts, 1);

    let mut b = rig(Engine::Bcs);
    let mut c = CmdBuf::new();
    c.flush_dw(PostSync::WriteImmediate, Ggtt, WIN + 0x800, 0x99, false, true);
    c.flush_dw(PostSync::WriteImmediate, Ggtt, WIN + 0x808, 0x1_0000_0002, true, false);
    c.flush_dw(PostSync::WriteTimestamp, Ppgtt, VA + 0x80, 0, true, false);
    let rep = b.run(&c).unwrap();
    assert_eq!(b.ggtt32(WIN + 0x800), 0x99);
    assert_eq!(b.ggtt32(WIN + 0x804), 0, "a dword write writes one dword");
    assert_eq!(b.ggtt64(WIN + 0x808), 0x1_0000_0002);
    assert!(b.ppgtt32(VA + 0x80) > 0);
    assert_eq!(rep.interrupts, 1);
}

#[test]
fn semaphore_wait_passes_or_hangs() {
    let cost = CostModel { hang_timeout_ns: 200_000, ..CostModel::default() };
    let mut r = rig_with(Engine::Rcs, cost);
    let (sem, t) = (WIN + 0x900, WIN + 0x904);
    r.guest.write_obj(3u32, GuestAddress(sem - WIN)).unwrap();
    let mut c = CmdBuf::new();
    c.semaphore_wait(Ggtt, sem, 3).store_dword(Ggtt, t, 1);
    r.run(&c).unwrap();
    assert_eq!(r.ggtt32(t), 1);
    let mut c = CmdBuf::new();
    c.semaphore_wait(Ggtt, sem, 4).store_dword(Ggtt, t, 2);
    let e = r.run(&c).unwrap_err();
    assert!(
        matches!(e, HostError::Hang { engine: Engine::Rcs, engine_ns, .. } if engine_ns == 200_000),
        "{e}: stopped at the timeout"
    );
    assert_eq!(r.ggtt32(t), 1, "nothing after the wait ran");
    r.gpu.reset_engine(Engine::Rcs);
    r.guest.write_obj(4u32, GuestAddress(sem - WIN)).unwrap();
    r.run(&c).unwrap();
    assert_eq!(r.ggtt32(t), 2, "the engine works after its reset");
}

#[test]
fn atomics() {
    let mut r = rig(Engine::Rcs);
    let a = WIN + 0xa00;
    r.guest.write_obj(10u32, GuestAddress(a - WIN)).unwrap();
    r.guest.write_obj(u64::MAX, GuestAddress(a + 8 - WIN)).unwrap();
    r.guest.write_obj(7u32, GuestAddress(a + 16 - WIN)).unwrap();
    let inline = |op: u32, size: u32, addr: u64, x: u32, y: u32| {
        [0x1780_0009 | 1 << 22 | 1 << 18 | size << 19 | op << 8, addr as u32, 0, x, y, 0, 0, 0, 0, 0, 0]
    };
    let mut c = CmdBuf::new();
    c.raw(&inline(0x07, 0, a, 5, 0)); // ADD 5 -> 15
    c.atomic(0x25, 1, Ggtt, a + 8); // INC8B: wraps to 0
    c.raw(&inline(0x0e, 0, a + 16, 7, 42)); // CMP_WR: 7 == 7 -> 42
    c.raw(&inline(0x0e, 0, a + 16, 7, 43)); // 42 != 7: unchanged
    c.raw(&[inline(0x08, 0, a, 1, 0)[0] | 1 << 16, a as u32, 0, 1, 0, 0, 0, 0, 0, 0, 0]); // SUB 1, return old
    r.run(&c).unwrap();
    assert_eq!(r.ggtt32(a), 14);
    assert_eq!(r.ggtt64(a + 8), 0);
    assert_eq!(r.ggtt32(a + 16), 42);
    assert_eq!(r.reg(reg::GPR0), 15, "return data is the value before the operation");
}

#[test]
fn math_alu() {
    let mut r = rig(Engine::Rcs);
    let t = WIN + 0xb00;
    let ins = |op: u32, a: u32, b: u32| op << 20 | a << 10 | b;
    let (load, add, sub, and, store, storeinv) = (0x080, 0x100, 0x101, 0x102, 0x180, 0x580);
    let (srca, srcb, accu, cf) = (0x20, 0x21, 0x31, 0x33);
    let mut c = CmdBuf::new();
    c.lri(&[(gpr(0), 40), (gpr(1), 2), (gpr(4), 0xf0)]);
    c.math(&[ins(load, srca, 0), ins(load, srcb, 1), ins(add, 0, 0), ins(store, 2, accu)]);
    c.math(&[ins(load, srca, 1), ins(load, srcb, 0), ins(sub, 0, 0), ins(store, 3, accu), ins(store, 5, cf)]);
    c.math(&[ins(load, srca, 4), ins(load, srcb, 0), ins(and, 0, 0), ins(storeinv, 6, accu)]);
    c.srm(gpr(2), Ggtt, t).srm(gpr(3), Ggtt, t + 4).srm(gpr(5), Ggtt, t + 8).srm(gpr(6), Ggtt, t + 12);
    r.run(&c).unwrap();
    assert_eq!(r.ggtt32(t), 42);
    assert_eq!(r.ggtt32(t + 4), (2u32).wrapping_sub(40));
    assert_eq!(r.ggtt32(t + 8), u32::MAX, "2 - 40 borrows");
    assert_eq!(r.ggtt32(t + 12), !(0xf0 & 40));
}

#[test]
fn copy_mem_mem_and_user_interrupt() {
    let mut r = rig(Engine::Vcs);
    r.guest.write_obj(0x4242u32, GuestAddress(VA_GPA + 0x10)).unwrap();
    let mut c = CmdBuf::new();
    c.copy_mem_mem(Ggtt, WIN + 0xc00, Ppgtt, VA + 0x10).user_interrupt().user_interrupt();
    let rep = r.run(&c).unwrap();
    assert_eq!(r.ggtt32(WIN + 0xc00), 0x4242);
    assert_eq!(rep.interrupts, 2);
}

#[test]
fn blits_on_linear_surfaces() {
    let mut r = rig(Engine::Bcs);
    let (src, dst, dst2) = (VA, VA + 0x4_0000, VA + 0x8_0000);
    // Source: 16x8 pixels, pitch 64 bytes, pixel (x, y) = y << 8 | x.
    for y in 0..8u64 {
        for x in 0..16u64 {
            r.guest.write_obj((y << 8 | x) as u32, GuestAddress(VA_GPA + y * 64 + x * 4)).unwrap();
        }
    }
    let mut c = CmdBuf::new();
    c.xy_color(dst, 128, 4, 3, 0xc0c0_c0c0);
    c.xy_src_copy(dst + 0x1000, 128, src, 64, 16, 8);
    c.xy_fast_copy(dst2, 256, src, 64, 16, 8);
    let rep = r.run(&c).unwrap();
    let px = |va: u64| r.ppgtt32(va);
    assert_eq!(px(dst), 0xc0c0_c0c0);
    assert_eq!(px(dst + 2 * 128 + 3 * 4), 0xc0c0_c0c0);
    assert_eq!(px(dst + 3 * 128), 0, "below the fill");
    assert_eq!(px(dst + 4 * 4), 0, "right of the fill");
    assert_eq!(px(dst + 0x1000 + 5 * 128 + 7 * 4), 5 << 8 | 7);
    assert_eq!(px(dst2 + 7 * 256 + 15 * 4), 7 << 8 | 15);
    assert_eq!(px(dst2 + 8 * 256), 0);
    assert_eq!(rep.bytes_moved, 4 * 3 * 4 + 2 * 2 * 16 * 8 * 4);
    assert_eq!(rep.skipped_blits, 0);
}

#[test]
fn three_d_commands_cost_their_model() {
    let mut r = rig(Engine::Rcs);
    r.run(CmdBuf::new().noop(2)).unwrap(); // from now on the image restores the saved lists
    let base = r.run(CmdBuf::new().noop(2)).unwrap().engine_ns;
    // 3DPRIMITIVE, 300 vertices, 1 instance.
    let rep = r.run(CmdBuf::new().raw(&[0x7b00_0005, 0, 300, 0, 1, 0, 0])).unwrap();
    assert_eq!(rep.engine_ns - base, 2_000 + 600 - 1);
}

#[test]
fn runaway_batch_hangs_and_the_engine_recovers() {
    let cost = CostModel { hang_timeout_ns: 100_000, ..CostModel::default() };
    let mut r = rig_with(Engine::Rcs, cost);
    let b = WIN + 0x2_0000;
    let mut lp = CmdBuf::new();
    lp.store_dword(Ggtt, WIN + 0xd00, 1).bb_start(Ggtt, b, false);
    r.put(b, &lp);
    let e = r.run(CmdBuf::new().bb_start(Ggtt, b, false)).unwrap_err();
    assert!(matches!(e, HostError::Hang { at, .. } if (b..b + 0x20).contains(&at)), "{e}");
    r.gpu.reset_engine(Engine::Rcs);
    r.run(CmdBuf::new().store_dword(Ggtt, WIN + 0xd04, 2)).unwrap();
    assert_eq!(r.ggtt32(WIN + 0xd04), 2);
}

#[test]
fn faults_are_reported_not_panics() {
    let mut r = rig(Engine::Rcs);
    // A GGTT address outside every mapping.
    let e = r.run(CmdBuf::new().store_dword(Ggtt, 0x8000_0000, 1)).unwrap_err();
    assert!(matches!(&e, HostError::Fault { why, .. } if why.contains("not mapped")), "{e}");
    // A command the streamer does not execute (MI_SET_CONTEXT).
    let e = r.run(CmdBuf::new().raw(&[0x0c00_0000, 0])).unwrap_err();
    assert!(matches!(e, HostError::Fault { .. }), "{e}");
    // A blitter command on the render engine.
    let e = r.run(CmdBuf::new().xy_color(VA, 64, 1, 1, 0)).unwrap_err();
    assert!(matches!(e, HostError::Fault { .. }), "{e}");
}

#[test]
fn context_restore_and_save() {
    let mut r = rig(Engine::Rcs);
    // An engine-context register list: LRI of GPR7 = 5.
    {
        let (_, eng) = r.ctx.parts_mut();
        eng[..4].copy_from_slice(&[0x1100_0001, gpr(7), 5, 0x0500_0000]);
    }
    let t = WIN + 0xe00;
    let mut c = CmdBuf::new();
    c.srm(gpr(7), Ggtt, t).lri(&[(gpr(7), 6)]);
    c.align_qword();
    let rep = r.run(&c).unwrap();
    assert_eq!(r.ggtt32(t), 5, "the image's register loads ran before the ring");
    // The engine saves in its own layout, whatever the image held.
    let list = lrc::engine_context_list(Gen::Gen9, Engine::Rcs);
    let k = list.regs.iter().position(|&x| x == reg::GPR0 + 8 * 7).unwrap();
    let (ring, eng) = r.ctx.parts();
    let at = |i: usize| eng[i - lrc::ENGINE_CONTEXT_DWORD];
    assert_eq!(at(lrc::ENGINE_CONTEXT_DWORD), 0, "MI_NOOP before the list");
    assert_eq!(at(list.header), lrc::lri_header(44));
    assert_eq!((at(list.value_index(k) - 1), at(list.value_index(k))), (gpr(7), 6), "GPR7 saved");
    assert_eq!(ring[1024 + idx::RING_HEAD] & 0x1f_fffc, c.len_bytes() as u32, "head saved at the tail");
    assert!(ring[1024 + idx::CTX_TIMESTAMP] > 0 && rep.engine_ns >= CostModel::default().context_restore_ns);
    // What was saved restores: the next run reads GPR7 = 6 before its ring runs.
    r.run(CmdBuf::new().srm(gpr(7), Ggtt, t).align_qword()).unwrap();
    assert_eq!(r.ggtt32(t), 6);
}

#[test]
fn restore_inhibit_and_save_inhibit_are_honoured() {
    let mut r = rig(Engine::Rcs);
    let t = WIN + 0xe00;
    r.run(CmdBuf::new().lri(&[(gpr(3), 0x33)]).align_qword()).unwrap();
    // The image now restores GPR3 = 0x33. A context with restore inhibit does not load it: the
    // engine keeps what it has, here 0x44.
    r.gpu.write_reg(Engine::Rcs, gpr(3), 0x44);
    *r.ctx.image_dword_mut(1024 + idx::CONTEXT_CONTROL).unwrap() = 0xffff_0001;
    r.run(CmdBuf::new().srm(gpr(3), Ggtt, t).align_qword()).unwrap();
    assert_eq!(r.ggtt32(t), 0x44, "restore inhibit: the engine context was not loaded");
    let list = lrc::engine_context_list(Gen::Gen9, Engine::Rcs);
    let k = list.regs.iter().position(|&x| x == reg::GPR0 + 8 * 3).unwrap();
    let saved = |r: &Rig| r.ctx.parts().1[list.value_index(k) - lrc::ENGINE_CONTEXT_DWORD];
    assert_eq!(saved(&r), 0x44, "but it was saved");
    // Save inhibit: the image keeps what it had.
    *r.ctx.image_dword_mut(1024 + idx::CONTEXT_CONTROL).unwrap() = 0xffff_0004;
    r.run(CmdBuf::new().lri(&[(gpr(3), 0x55)]).align_qword()).unwrap();
    assert_eq!(saved(&r), 0x44, "save inhibit: the engine context was not saved");
    assert_eq!(r.reg(reg::GPR0 + 8 * 3), 0x55);
}

#[test]
fn register_loads_of_the_roots_and_ring_take_effect_when_executed() {
    let mut r = rig(Engine::Rcs);
    // Tables in guest memory written the way the engine reads them: entries hold host (DMA)
    // addresses, here of guest memory, which is slot 1. They map VA to VA_GPA + 1 MiB.
    let host = |gpa: u64| 1u64 << 40 | gpa;
    let pml4b = PML4 + 0x10_0000;
    let w = |a: u64, v: u64| r.guest.write_obj(v, GuestAddress(a)).unwrap();
    w(pml4b, host(pml4b + 0x1000) | 3);
    w(pml4b + 0x1000 + 8, host(pml4b + 0x2000) | 3);
    w(pml4b + 0x2000, host(pml4b + 0x3000) | 3);
    w(pml4b + 0x3000, host(VA_GPA + 0x10_0000) | 3);
    let mut c = CmdBuf::new();
    c.store_dword(Ppgtt, VA, 1);
    c.lri(&[(Engine::Rcs.mmio_base() + reg::PDP0_LDW + 4, (host(pml4b) >> 32) as u32)]);
    c.lri(&[(Engine::Rcs.mmio_base() + reg::PDP0_LDW, host(pml4b) as u32)]);
    c.store_dword(Ppgtt, VA, 2);
    r.run(c.align_qword()).unwrap();
    assert_eq!(r.ppgtt32(VA), 1, "the first store walked the context's tables");
    let other: u32 = r.guest.read_obj(GuestAddress(VA_GPA + 0x10_0000)).unwrap();
    assert_eq!(other, 2, "the root load took effect: the engine walked the loaded tables");

    // RING_TAIL loaded from the ring moves the end of the fetch.
    let mut r = rig(Engine::Bcs);
    let tail = Engine::Bcs.mmio_base() + reg::RING_TAIL;
    let mut c = CmdBuf::new();
    c.lri(&[(tail, 0x10)]).noop(1).store_dword(Ggtt, WIN + 0x700, 9);
    r.run(c.align_qword()).unwrap();
    assert_eq!(r.ggtt32(WIN + 0x700), 0, "the fetch stopped at the loaded tail");
}

#[test]
fn the_3d_state_is_restored_after_the_indirect_context_batch() {
    // The engine runs the indirect-context batch inside the restore (at INDIRECT_CTX_OFFSET, in
    // the register-state page), before the 3D state of pages 2..: a register the workaround batch
    // writes and the context saved in its 3D state keeps the context's value (i915's Gen9 batch
    // clears bit 12 of COMMON_SLICE_CHICKEN2; IGT's gem_ctx_isolation sets it from a user batch).
    let mut r = rig(Engine::Rcs);
    let mut wa = CmdBuf::new();
    wa.lri(&[(0x7014, 0x1000_0000)]).bb_end();
    r.put(WIN + 0x3000, &wa);
    *r.ctx.image_dword_mut(1024 + idx::INDIRECT_CTX).unwrap() = (WIN + 0x3000) as u32 | 1;
    for (i, v) in [lrc::lri_header(1), 0x7014, 0xffff_1000].into_iter().enumerate() {
        *r.ctx.image_dword_mut(2048 + i).unwrap() = v;
    }
    let mut c = CmdBuf::new();
    c.srm(0x7014, Ggtt, WIN + 0x900);
    r.run(c.align_qword()).unwrap();
    assert_eq!(r.ggtt32(WIN + 0x900) & 0x1000, 0x1000, "the context's saved value won");
}

#[test]
fn a_register_poll_reads_the_register_not_memory() {
    // Gen9 MI_SEMAPHORE_WAIT in register poll mode compares a register: the address dwords name
    // it, and no memory is read (here they would name an unmapped global-GTT address).
    let mut r = rig(Engine::Bcs);
    let gpr = Engine::Bcs.mmio_base() + reg::GPR0;
    let mut c = CmdBuf::new();
    c.lri(&[(gpr, 5)]).raw(&[0x0e41_9002, 5, gpr, 0xffff]).store_dword(Ggtt, WIN + 0x900, 1);
    r.run(c.align_qword()).unwrap();
    assert_eq!(r.ggtt32(WIN + 0x900), 1);
}

#[test]
fn add_offset_enable_adds_bb_offset_to_the_batch_start() {
    // Gen9: a batch start with Add Offset Enable fetches from its address plus BB_OFFSET, as the
    // hardware does, so a scanner that let one through would show here.
    let mut r = rig(Engine::Bcs);
    let bcs = Engine::Bcs.mmio_base();
    let mut target = CmdBuf::new();
    target.store_dword(Ggtt, WIN + 0x900, 7).bb_end();
    r.put(WIN + 0x3000, &target);
    let mut c = CmdBuf::new();
    c.lri(&[(bcs + reg::BB_OFFSET, 0x2000)]).raw(&[0x1881_0001, (WIN + 0x1000) as u32, (WIN >> 32) as u32]);
    r.run(c.align_qword()).unwrap();
    assert_eq!(r.ggtt32(WIN + 0x900), 7, "the engine ran the batch at address + BB_OFFSET");
}

#[test]
fn non_privileged_batches_cannot_do_what_privileged_ones_can() {
    let mut r = rig(Engine::Bcs);
    let bcs = Engine::Bcs.mmio_base();
    let mut b = CmdBuf::new();
    b.lri(&[(bcs + reg::GPR0, 7)]); // allowed: a general-purpose register
    b.lri(&[(bcs + reg::GPR0 + 8, 8), (bcs + reg::HWS_PGA, 0x1234_5000)]); // one register is not
    b.lri(&[(crate::hw::reg::GDRST, 1)]);
    b.store_dword(Ggtt, WIN + 0x800, 5); // a global-GTT store
    b.store_dword(Ppgtt, VA + 0x800, 6);
    b.bb_end();
    r.guest.write_slice(&b.to_bytes(), GuestAddress(VA_GPA + 0x1000)).unwrap();
    let mut ring = CmdBuf::new();
    ring.bb_start(Ppgtt, VA + 0x1000, false);
    let rep = r.run(ring.align_qword()).unwrap();
    assert_eq!(rep.privilege_violations, 3);
    assert_eq!(r.reg(reg::GPR0), 7);
    assert_eq!((r.reg(reg::GPR0 + 8), r.reg(reg::HWS_PGA)), (0, 0), "the whole load became MI_NOOP");
    assert_eq!(r.ggtt32(WIN + 0x800), 0);
    assert_eq!(r.ppgtt32(VA + 0x800), 6);
    assert!(r.gpu.stream_register_writes().is_empty());
    // The same commands from a privileged (GGTT) batch take effect, GPU-wide.
    r.put(WIN + 0x1_0000, &b);
    let mut ring = CmdBuf::new();
    ring.bb_start(Ggtt, WIN + 0x1_0000, false);
    let e = r.run(ring.align_qword()).unwrap_err();
    assert!(matches!(&e, HostError::Fault { why, .. } if why.contains("GDRST")), "{e}");
    assert_eq!((r.reg(reg::GPR0 + 8), r.reg(reg::HWS_PGA)), (8, 0x1234_5000));
    let w = r.gpu.stream_register_writes();
    assert_eq!(w, vec![StreamWrite { engine: Engine::Bcs, reg: crate::hw::reg::GDRST, value: 1 }]);
}

/// A workload with every kind of nesting the streamer has: a first-level batch that calls a
/// second-level one, chains to another first-level batch, and writes along the way (stores,
/// MI_MATH on GPRs, an atomic), with MI_ARB_CHECKs so every engine has points to stop at.
fn nested_workload(r: &Rig) -> CmdBuf {
    let (b1, b2, chained, out) = (WIN + 0x2_0000, WIN + 0x2_1000, WIN + 0x2_2000, WIN + 0x3_0000);
    let gpr = |n: u32| r.engine.mmio_base() + reg::GPR0 + 8 * n;
    let mut l1 = CmdBuf::new();
    l1.lri(&[(gpr(0), 5), (gpr(1), 7)]).raw(&[0x0280_0000]); // MI_ARB_CHECK
    l1.store_dword(Ggtt, out, 1).bb_start(Ggtt, b2, true).store_dword(Ggtt, out + 4, 3);
    l1.raw(&[0x0280_0000]).bb_start(Ggtt, chained, false);
    let mut l2 = CmdBuf::new();
    l2.store_dword(Ggtt, out + 8, 2).raw(&[0x0280_0000]);
    // GPR2 = GPR0 + GPR1, stored.
    l2.math(&[0x0800_8000, 0x0800_8401, 0x1000_0000, 0x1800_0831]).srm(gpr(2), Ggtt, out + 12);
    l2.raw(&[0x0280_0000]).bb_end();
    let mut l3 = CmdBuf::new();
    l3.atomic(0x07, 0, Ggtt, out + 16).raw(&[0x0280_0000]).store_dword(Ggtt, out + 20, 4);
    for i in 0..16 {
        l3.store_dword(Ggtt, out + 24 + 4 * i, 100 + i as u32);
    }
    l3.bb_end();
    r.put(b1, &l1);
    r.put(b2, &l2);
    r.put(chained, &l3);
    let mut ring = CmdBuf::new();
    ring.store_dword(Ggtt, out + 0x100, 9).raw(&[0x0280_0000]).bb_start(Ggtt, b1, false).raw(&[0x0280_0000]);
    ring.store_dword(Ggtt, out + 0x104, 10).align_qword();
    ring
}

/// Runs `ring` to completion, stopped at the preemption points `stop_at` picks (by how many it
/// has been asked), each resume a fresh run of the saved image. Returns the runs it took.
fn run_preempted(r: &mut Rig, ring: &CmdBuf, stop_at: &dyn Fn(u64) -> bool) -> u32 {
    let mut w = super::testing::ring_workload(&mut r.ctx, &r.gpu.layout(r.engine), ring);
    let pml4 = r.root.pdps()[0];
    *r.ctx.image_dword_mut(1024 + idx::PDP3_UDW + 14).unwrap() = pml4 as u32;
    let asked = std::cell::Cell::new(0u64);
    let stop = |_: u64| {
        asked.set(asked.get() + 1);
        stop_at(asked.get())
    };
    for runs in 1..10_000 {
        let mut job = HostJob::new(&mut w, None, &mut r.ctx, false);
        job.preempt = Some(&stop);
        let rep = r.gpu.run(r.engine, job).unwrap();
        if !rep.preempted {
            return runs;
        }
    }
    panic!("never completed");
}

#[test]
fn a_preempted_workload_ends_exactly_as_an_unpreempted_one() {
    for engine in [Engine::Rcs, Engine::Bcs] {
        let mut whole = rig(engine);
        let ring = nested_workload(&whole);
        assert_eq!(run_preempted(&mut whole, &ring, &|_| false), 1);
        let out = |r: &Rig| (0..0x110).step_by(4).map(|o| r.ggtt32(WIN + 0x3_0000 + o)).collect::<Vec<_>>();
        let expected = out(&whole);
        assert_eq!(&expected[..6], &[1, 3, 2, 12, 5, 4], "{engine}: the workload's own results");
        let state = |r: &Rig| (r.ctx.state(idx::RING_HEAD), r.reg(reg::GPR0 + 16), r.ctx.state(reg_idx(reg::BB_STATE)));
        // Stopped at every preemption point, at every other one, at every third.
        for every in [1u64, 2, 3] {
            let mut cut = rig(engine);
            let ring = nested_workload(&cut);
            let runs = run_preempted(&mut cut, &ring, &|n| n % every == 0);
            assert!(runs > 5, "{engine}: only {runs} runs: the workload was hardly preempted");
            assert_eq!(out(&cut), expected, "{engine}, preempted at every {every}: memory differs");
            assert_eq!(
                state(&cut),
                state(&whole),
                "{engine}, preempted at every {every}: ring head or registers differ"
            );
        }
    }
}

/// Value-dword index in the register-state page of a ring-context register.
fn reg_idx(rel: u32) -> usize {
    let [ring, ..] = lrc::ring_context_lists(Gen::Gen9, Engine::Rcs);
    let k = ring.regs.iter().position(|&r| r == rel).unwrap();
    ring.value_index(k)
}

#[test]
fn preemption_waits_for_arbitration_and_a_semaphore_resumes_waiting() {
    // MI_ARB_ON_OFF off: no preemption point counts until it is back on.
    let mut r = rig(Engine::Rcs);
    let mut ring = CmdBuf::new();
    ring.raw(&[0x0400_0000]); // MI_ARB_ON_OFF (off)
    for i in 0..8 {
        ring.store_dword(Ggtt, WIN + 0x500 + 4 * i, i as u32);
    }
    ring.raw(&[0x0400_0001]).store_dword(Ggtt, WIN + 0x600, 1).align_qword();
    assert_eq!(run_preempted(&mut r, &ring, &|_| true), 2, "one stop, after arbitration came back");
    // A semaphore wait stops the run while it waits, and waits again when resumed.
    let mut r = rig(Engine::Vcs);
    let mut ring = CmdBuf::new();
    ring.store_dword(Ggtt, WIN + 0x700, 1).semaphore_wait(Ggtt, WIN + 0x704, 1).store_dword(Ggtt, WIN + 0x708, 2);
    ring.align_qword();
    let mut w = super::testing::ring_workload(&mut r.ctx, &r.gpu.layout(r.engine), &ring);
    let stop = |used: u64| used > 100_000;
    for _ in 0..3 {
        let mut job = HostJob::new(&mut w, None, &mut r.ctx, false);
        job.preempt = Some(&stop);
        assert!(r.gpu.run(r.engine, job).unwrap().preempted);
        assert_eq!(r.ggtt32(WIN + 0x708), 0);
    }
    r.guest.write_obj(1u32, GuestAddress(0x704)).unwrap();
    let mut job = HostJob::new(&mut w, None, &mut r.ctx, false);
    job.preempt = Some(&stop);
    assert!(!r.gpu.run(r.engine, job).unwrap().preempted);
    assert_eq!(r.ggtt32(WIN + 0x708), 2);
}
