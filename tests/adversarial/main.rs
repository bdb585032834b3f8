//! Attacks on vGPU isolation, one class per test: an attacker vGPU beside a victim vGPU on one
//! software GPU. Each test mounts the attack through the attacker's own registers, memory,
//! command streams and context images, then checks (`World::assert_unharmed`) that nothing of
//! the victim or the host was reached and that the victim keeps working. docs/security.md maps
//! each class to the mechanism that closes it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod world;

use shadowgpu::cmd::emit::{CmdBuf, PostSync};
use shadowgpu::cmd::AddrSpace::{Ggtt, Ppgtt};
use shadowgpu::hw::lrc::{self, idx, lri_header, ENGINE_CONTEXT_DWORD};
use shadowgpu::hw::reg;
use shadowgpu::hw::{Engine, Gen};
use world::*;

const MI_BATCH_BUFFER_END: u32 = 0x0500_0000;
const INHIBIT: u32 = 0x0001_0001;

/// The first register-state dword past the clean engine context's register lists (in page 2 on
/// the render engine): a guest's own commands in its engine context go there. Before it, the
/// shadow gives every engine context the clean context's structure (only values are the guest's).
fn free_dword(e: Engine) -> usize {
    let list = lrc::render_state_list(Gen::Gen9, e).unwrap_or_else(|| lrc::engine_context_list(Gen::Gen9, e));
    list.value_index(list.regs.len() - 1) + 1
}

/// An unscanned ring in the attacker's own memory that writes the victim's canaries.
fn evil_ring(w: &mut World) -> (u64, u64) {
    let (gma, gpa) = w.attacker.g.gm_alloc(PAGE).unwrap();
    let mut evil = CmdBuf::new();
    evil.store_dword(Ggtt, w.victim_gtt_canary.0, 0xbad).store_dword(Ggtt, w.victim_hidden_canary.0, 0xbad);
    evil.align_qword();
    w.attacker.put(gpa, &evil);
    (gma, evil.len_bytes())
}

/// Writes an engine context into the attacker's `e` image that points the ring registers at
/// `ring` (`len` bytes).
fn hostile_engine_context(w: &World, e: Engine, ring: u64, len: u64) {
    let b = e.mmio_base();
    let lri =
        [lri_header(4), b + 0x38, ring as u32, b + 0x34, 0, b + 0x30, len as u32, b + 0x3c, 1, MI_BATCH_BUFFER_END];
    for (k, v) in lri.iter().enumerate() {
        w.attacker.ctx_state(e, free_dword(e) + k, *v);
    }
}

#[test]
fn class1_restore_inhibit_never_loads_an_unscanned_engine_context() {
    for e in [Engine::Rcs, Engine::Bcs] {
        let mut w = World::new();
        let (ring, len) = evil_ring(&mut w);
        hostile_engine_context(&w, e, ring, len);
        w.attacker.ctx_state(e, idx::CONTEXT_CONTROL, INHIBIT);
        let _ = w.attacker.g.submit_ring(e, &CmdBuf::new());
        w.assert_unharmed();
    }
}

#[test]
fn class1_restore_inhibit_flipped_after_submission_decides_nothing() {
    // The engine is busy when the attacker submits, so the shadow context is built later; the
    // attacker clears restore inhibit in between.
    let mut w = World::new();
    let e = Engine::Rcs;
    let (ring, len) = evil_ring(&mut w);
    hostile_engine_context(&w, e, ring, len);
    w.attacker.ctx_state(e, idx::CONTEXT_CONTROL, INHIBIT);
    let gate = w.gate(e);
    let _ = w.attacker.g.submit_ring(e, &CmdBuf::new());
    w.attacker.ctx_state(e, idx::CONTEXT_CONTROL, 0x0001_0000);
    gate.open(&mut w);
    w.assert_unharmed();
    assert_eq!(w.attacker.stopped(), 1, "the engine context it loads is scanned and refused");
}

#[test]
fn class1_an_engine_context_cannot_forge_where_a_preempted_run_resumes() {
    // The ring context's batch state (BB_STATE/BB_ADDR, the second level's too) says where a
    // preempted run resumes. It is the host's: loaded from the engine context, it would make the
    // engine resume in a batch nobody scanned, privileged (a GGTT batch).
    for e in [Engine::Rcs, Engine::Bcs] {
        for second_level in [false, true] {
            let mut w = World::new();
            let (evil, _) = evil_ring(&mut w);
            let b = e.mmio_base();
            // BB_ADDR, BB_ADDR_UDW, BB_STATE (valid, GGTT); then SBB_ADDR, SBB_ADDR_UDW, SBB_STATE.
            let mut loads = vec![(b + 0x140, evil as u32), (b + 0x168, 0), (b + 0x110, 1)];
            if second_level {
                loads.extend([(b + 0x114, evil as u32), (b + 0x11c, 0), (b + 0x118, 1)]);
            }
            let mut lri = vec![lri_header(loads.len())];
            lri.extend(loads.iter().flat_map(|&(r, v)| [r, v]));
            lri.push(MI_BATCH_BUFFER_END);
            for (k, v) in lri.iter().enumerate() {
                w.attacker.ctx_state(e, free_dword(e) + k, *v);
            }
            let _ = w.attacker.g.submit_ring(e, &CmdBuf::new());
            w.assert_unharmed();
            assert_eq!(w.attacker.stopped(), 1, "{e} (second level {second_level}): refused");
        }
    }
}

/// Page tables in the attacker's RAM whose leaf for PPGTT address 0 names the victim's RAM
/// canary (host addresses, as the GPU would walk them): returns the PML4's host address.
fn fake_tables(w: &World) -> u64 {
    let t = RAM - 64 * PAGE;
    let host = |gpa| w.attacker_host_addr(gpa);
    let q = |gpa: u64, v: u64| w.attacker.mem.write_obj(v, vm_memory::GuestAddress(gpa)).unwrap();
    q(t, host(t + PAGE) | 3);
    q(t + PAGE, host(t + 2 * PAGE) | 3);
    q(t + 2 * PAGE, host(t + 3 * PAGE) | 3);
    q(t + 3 * PAGE, w.victim_host_addr(RAM_CANARY) | 3);
    host(t)
}

fn root_load(e: Engine, value: u64) -> CmdBuf {
    let b = e.mmio_base() + reg::ring::PDP0_LDW;
    let mut c = CmdBuf::new();
    c.lri(&[(b + 4, (value >> 32) as u32), (b, value as u32)]);
    c
}

use vm_memory::Bytes;

#[test]
fn class2_root_loads_in_the_ring_cannot_name_other_tables() {
    let mut w = World::new();
    let e = Engine::Bcs;
    let pml4 = fake_tables(&w);
    let mut ring = root_load(e, pml4);
    ring.store_dword(Ppgtt, 0, 0xbad);
    let r = w.attacker.g.submit_ring(e, &ring);
    w.assert_unharmed();
    assert!(r.is_err(), "refused at submission");
    assert_eq!(w.attacker.stopped(), 1);
}

#[test]
fn class2_root_loads_in_batches_and_workaround_batches_cannot_name_other_tables() {
    // A GGTT batch, the indirect-context batch and the per-context batch (render).
    for case in ["ggtt batch", "indirect context", "per-context batch"] {
        let mut w = World::new();
        let e = Engine::Rcs;
        let pml4 = fake_tables(&w);
        let mut b = root_load(e, pml4);
        b.store_dword(Ppgtt, 0, 0xbad).bb_end();
        let (gma, gpa) = w.attacker.g.gm_alloc(PAGE).unwrap();
        w.attacker.put(gpa, &b);
        match case {
            "ggtt batch" => {
                let mut ring = CmdBuf::new();
                ring.bb_start(Ggtt, gma, false);
                let _ = w.attacker.g.submit_ring(e, &ring);
            }
            "indirect context" => {
                w.attacker.ctx_state(e, idx::INDIRECT_CTX, gma as u32 | 1);
                let _ = w.attacker.g.submit_ring(e, &CmdBuf::new());
            }
            _ => {
                w.attacker.ctx_state(e, idx::BB_PER_CTX_PTR, gma as u32 | 1);
                let _ = w.attacker.g.submit_ring(e, &CmdBuf::new());
            }
        }
        w.assert_unharmed();
        assert_eq!(w.attacker.stopped(), 1, "{case}");
    }
}

#[test]
fn class2_a_root_load_from_a_non_privileged_batch_is_dropped() {
    let mut w = World::new();
    let e = Engine::Bcs;
    let pml4 = fake_tables(&w);
    let mut b = root_load(e, pml4);
    let va = w.attacker.g.data_va();
    b.store_dword(Ppgtt, va, 0x600d).bb_end();
    let s = w.attacker.g.submit(e, &b).unwrap();
    w.attacker.g.wait(e, s, T).unwrap();
    let got = w.attacker.r32(w.attacker.g.ppgtt_gpa(va).unwrap());
    assert_eq!(got, 0x600d, "the store went through the context's own tables");
    w.assert_unharmed();
}

#[test]
fn class2_the_contexts_own_root_reloaded_as_i915_does_runs() {
    let mut w = World::new();
    let e = Engine::Bcs;
    let own = w.attacker.g.pml4();
    let va = w.attacker.g.data_va();
    let mut ring = root_load(e, own);
    ring.store_dword(Ppgtt, va, 0x1234);
    let s = w.attacker.g.submit_ring(e, &ring).unwrap();
    w.attacker.g.wait(e, s, T).unwrap();
    assert_eq!(w.attacker.r32(w.attacker.g.ppgtt_gpa(va).unwrap()), 0x1234);
    assert_eq!(w.attacker.stopped(), 0);
    w.assert_unharmed();
}

#[test]
fn class2_root_loads_in_a_context_image_are_refused() {
    let mut w = World::new();
    let e = Engine::Vcs;
    let pml4 = fake_tables(&w);
    let b = e.mmio_base() + reg::ring::PDP0_LDW;
    let lri = [lri_header(2), b + 4, (pml4 >> 32) as u32, b, pml4 as u32, MI_BATCH_BUFFER_END];
    for (k, v) in lri.iter().enumerate() {
        w.attacker.ctx_state(e, free_dword(e) + k, *v);
    }
    let mut ring = CmdBuf::new();
    ring.store_dword(Ppgtt, 0, 0xbad);
    let _ = w.attacker.g.submit_ring(e, &ring);
    w.assert_unharmed();
    assert_eq!(w.attacker.stopped(), 1);
}

/// Every way a command writes memory or a register, aimed at the victim or the host.
fn writes_to_victim_or_host(w: &World, e: Engine) -> Vec<(&'static str, CmdBuf)> {
    let canary = w.victim_gtt_canary.0;
    let hidden = w.victim_hidden_canary.0;
    let host = 0x1000; // the host's part of the aperture
    let mut out = Vec::new();
    let mut add = |name, f: &dyn Fn(&mut CmdBuf)| {
        let mut c = CmdBuf::new();
        f(&mut c);
        out.push((name, c));
    };
    add("store into the victim", &|c| {
        c.store_dword(Ggtt, canary, 0xbad);
    });
    add("store into the victim's hidden window", &|c| {
        c.store_qword(Ggtt, hidden, 0xbad);
    });
    add("store into the host", &|c| {
        c.store_dword(Ggtt, host, 0xbad);
    });
    add("atomic on the victim", &|c| {
        c.atomic(0x07, 0, Ggtt, canary);
    });
    add("copy into the victim", &|c| {
        c.copy_mem_mem(Ggtt, canary, Ppgtt, 0);
    });
    add("register store into the victim", &|c| {
        c.srm(e.mmio_base() + 0x600, Ggtt, canary);
    });
    add("reset the GPU", &|c| {
        c.lri(&[(reg::GDRST, 1)]);
    });
    add("move the status page", &|c| {
        c.lri(&[(e.mmio_base() + reg::ring::HWS_PGA, canary as u32)]);
    });
    add("move the ring", &|c| {
        c.lri(&[(e.mmio_base() + reg::ring::START, canary as u32)]);
    });
    if e == Engine::Rcs {
        add("post-sync into the victim", &|c| {
            c.pipe_control(0, PostSync::WriteImmediate, Ggtt, canary, 0xbad, false);
        });
        add("post-sync timestamp into the host", &|c| {
            c.pipe_control(0, PostSync::WriteTimestamp, Ggtt, host, 0, false);
        });
        add("post-sync register load of GDRST", &|c| {
            c.raw(&[0x7a00_0004, 1 << 23 | 1 << 14, reg::GDRST, 0, 1, 0]);
        });
    } else {
        add("flush post-sync into the victim", &|c| {
            c.flush_dw(PostSync::WriteImmediate, Ggtt, canary, 0xbad, true, false);
        });
        add("flush post-sync into the host", &|c| {
            c.flush_dw(PostSync::WriteImmediate, Ggtt, host, 0xbad, false, false);
        });
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Buffer {
    Ring,
    GgttBatch,
    PpgttBatch,
    IndirectContext,
    PerContextBatch,
    ContextImage,
}

/// Places `cmds` in the attacker's `buf` on `e` and submits.
fn mount(w: &mut World, e: Engine, buf: Buffer, cmds: &CmdBuf) {
    let mut batch = cmds.clone();
    batch.bb_end();
    match buf {
        Buffer::Ring => {
            let _ = w.attacker.g.submit_ring(e, cmds);
        }
        Buffer::PpgttBatch => {
            let _ = w.attacker.g.submit(e, &batch);
        }
        Buffer::GgttBatch | Buffer::IndirectContext | Buffer::PerContextBatch => {
            let (gma, gpa) = w.attacker.g.gm_alloc(PAGE).unwrap();
            w.attacker.put(gpa, &batch);
            let mut ring = CmdBuf::new();
            match buf {
                Buffer::GgttBatch => {
                    ring.bb_start(Ggtt, gma, false);
                }
                Buffer::IndirectContext => {
                    let lines = batch.len_bytes().div_ceil(64) as u32;
                    w.attacker.ctx_state(e, idx::INDIRECT_CTX, gma as u32 | lines);
                }
                _ => w.attacker.ctx_state(e, idx::BB_PER_CTX_PTR, gma as u32 | 1),
            }
            let _ = w.attacker.g.submit_ring(e, &ring);
        }
        Buffer::ContextImage => {
            for (k, v) in cmds.dwords.iter().chain([&MI_BATCH_BUFFER_END]).enumerate() {
                w.attacker.ctx_state(e, free_dword(e) + k, *v);
            }
            let _ = w.attacker.g.submit_ring(e, &CmdBuf::new());
        }
    }
}

#[test]
fn stores_post_syncs_and_register_loads_from_every_buffer_kind() {
    use Buffer::*;
    let kinds: &[(Engine, &[Buffer])] = &[
        (Engine::Rcs, &[Ring, GgttBatch, PpgttBatch, IndirectContext, PerContextBatch, ContextImage]),
        (Engine::Bcs, &[Ring, GgttBatch, PpgttBatch, ContextImage]),
    ];
    for &(e, bufs) in kinds {
        for &buf in bufs {
            let names: Vec<&str> = writes_to_victim_or_host(&World::new(), e).iter().map(|x| x.0).collect();
            for (n, name) in names.iter().enumerate() {
                let mut w = World::new();
                let cmds = writes_to_victim_or_host(&w, e).swap_remove(n).1;
                mount(&mut w, e, buf, &cmds);
                w.assert_unharmed();
                assert!(w.attacker.stopped() <= 1, "{e} {buf:?} {name}");
            }
        }
    }
}

#[test]
fn ggtt_entries_naming_memory_outside_the_guest_reach_only_scratch() {
    let mut w = World::new();
    let (gma, _) = w.attacker.g.gm_alloc(2 * PAGE).unwrap();
    // Far past its RAM, and just past its end with junk flag bits.
    w.attacker.gtt(gma, (1 << 40) | 1);
    w.attacker.gtt(gma + PAGE, RAM | 0xff3);
    let scratch = w.sim.memory().read_pte((gma + PAGE) / PAGE);
    assert_eq!(scratch & !0xfff, w.sim.memory().read_pte(gma / PAGE) & !0xfff, "both point at the scratch page");
    let mut ring = CmdBuf::new();
    ring.store_dword(Ggtt, gma, 0xbad).store_dword(Ggtt, gma + PAGE + 8, 0xbad);
    let s = w.attacker.g.submit_ring(Engine::Bcs, &ring).unwrap();
    w.attacker.g.wait(Engine::Bcs, s, T).unwrap();
    w.assert_unharmed();
}

#[test]
fn ppgtt_entries_outside_the_guest_and_tables_that_loop_or_straddle_ram() {
    let mut w = World::new();
    let e = Engine::Vcs;
    let t = RAM - 32 * PAGE;
    let q = |gpa: u64, v: u64| w.attacker.mem.write_obj(v, vm_memory::GuestAddress(gpa)).unwrap();
    // PML4[0] -> itself, PML4[1] -> a PDP in the last page of RAM whose entries point past RAM,
    // PML4[2] -> PDP -> PD -> PT with leaves outside RAM and at the victim's canary address.
    q(t, t | 3);
    q(t + 8, (RAM - PAGE) | 3);
    for i in 0..512 {
        q(RAM - PAGE + 8 * i, (RAM + i * PAGE) | 3);
    }
    q(t + 16, (t + PAGE) | 3);
    q(t + PAGE, (t + 2 * PAGE) | 3);
    q(t + 2 * PAGE, (t + 3 * PAGE) | 3);
    q(t + 3 * PAGE, (RAM + (1 << 30)) | 3);
    q(t + 3 * PAGE + 8, RAM_CANARY | 3);
    w.attacker.ctx_state(e, idx::PDP3_UDW + 14, t as u32);
    let mut ring = CmdBuf::new();
    for va in [0u64, 1 << 39, 2 << 39, (2 << 39) + PAGE, (1 << 39) + (5 << 30)] {
        ring.store_dword(Ppgtt, va, 0xbad);
    }
    let _ = w.attacker.g.submit_ring(e, &ring);
    w.assert_unharmed();
    // The canary-looking leaf is the attacker's own page of that address, not the victim's.
    assert_eq!(w.attacker.r32(RAM_CANARY), 0xbad);
}

#[test]
fn rewriting_ring_batch_and_tables_between_submission_and_run() {
    let mut w = World::new();
    let e = Engine::Rcs;
    let va = w.attacker.g.data_va();
    let mut b = CmdBuf::new();
    b.store_dword(Ppgtt, va, 0x600d).bb_end();
    let gate = w.gate(e);
    let s = w.attacker.g.submit(e, &b).unwrap();
    // Everything the submission named is rewritten while the engine is busy with the victim.
    let o = w.attacker.objs(e);
    let mut evil = CmdBuf::new();
    evil.store_dword(Ggtt, w.victim_gtt_canary.0, 0xbad).store_dword(Ggtt, w.victim_hidden_canary.0, 0xbad);
    let mut ring = evil.clone();
    ring.noop(32);
    w.attacker.put(o.ring_gpa, &ring);
    let mut batch = evil.clone();
    batch.store_dword(Ppgtt, va, 0x7e57).bb_end();
    // The batch was copied to the PPGTT batch area's first slot (the driver's first submit).
    let batch_gpa = w.attacker.g.ppgtt_gpa(shadowgpu::guest::PPGTT_VA).unwrap();
    w.attacker.put(batch_gpa, &batch);
    // The page tables now map the batch's address onto the ring page.
    let pt = w.attacker.g.pml4() + 3 * PAGE;
    w.attacker.mem.write_obj(o.ring_gpa | 3, vm_memory::GuestAddress(pt)).unwrap();
    gate.open(&mut w);
    w.attacker.g.wait(e, s, T).unwrap();
    w.assert_unharmed();
    // The ring ran as submitted (it is the engine's from the submission on); the batch as it was
    // when the engine reached it, as on the hardware, under the rules of a non-privileged batch
    // (its global-GTT stores taken in the PPGTT) and through the tables as shadowed.
    assert_eq!(w.attacker.r32(w.attacker.g.ppgtt_gpa(va).unwrap()), 0x7e57, "the batch as fetched ran");
}

#[test]
fn rewriting_the_context_between_submission_and_run_is_seen_and_scanned() {
    // The engine reads a context image when it loads it, so a rewrite before then is what it
    // would load: scanned then, and refused.
    let mut w = World::new();
    let e = Engine::Rcs;
    let gate = w.gate(e);
    let _ = w.attacker.g.submit_ring(e, &CmdBuf::new());
    let (ring, len) = evil_ring(&mut w);
    hostile_engine_context(&w, e, ring, len);
    gate.open(&mut w);
    w.assert_unharmed();
    assert_eq!(w.attacker.stopped(), 1);
}

#[test]
fn interrupt_sinks_that_are_not_eventfds_or_never_read_cost_nobody_else() {
    use std::os::fd::FromRawFd;
    let mut w = World::new();
    // A pipe is refused.
    let mut fds = [0; 2];
    // SAFETY: pipe fills two fresh descriptors, owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors.
    let (r, _wr) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    let refused = w.attacker.dev.set_irq(shadowgpu::mdev::IRQ_MSI, Some(shadowgpu::mdev::IrqTrigger::Eventfd(r)));
    assert!(refused.is_err());
    // An eventfd whose counter is full and that is never read: the attacker's interrupts pile up
    // there while the victim's work and interrupts go on.
    // SAFETY: eventfd returns a fresh descriptor (checked).
    let fd = unsafe { libc::eventfd(0, 0) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor.
    let efd = unsafe { std::fs::File::from_raw_fd(fd) };
    std::io::Write::write_all(&mut &efd, &(u64::MAX - 1).to_ne_bytes()).unwrap();
    w.attacker.dev.set_irq(shadowgpu::mdev::IRQ_MSI, Some(shadowgpu::mdev::IrqTrigger::Eventfd(efd))).unwrap();
    for _ in 0..50 {
        let mut b = CmdBuf::new();
        b.user_interrupt().bb_end();
        w.attacker.g.submit(Engine::Rcs, &b).unwrap();
    }
    w.assert_unharmed();
}

/// User-writable render registers of Gen9 (IGT gem_ctx_isolation's table): MI_PREDICATE_SRC0,
/// 3DPRIM_VERTEX_COUNT, SO_WRITE_OFFSET0, a pipeline-statistics counter, PS_INVOCATION_COUNT_0,
/// L3CNTLREG, CACHE_MODE_1 and CS_DEBUG_MODE2 (masked), a GPR.
const USER_REGS: [(u32, bool); 9] = [
    (0x2400, false),
    (0x2434, false),
    (0x5280, false),
    (0x2310, false),
    (0x22c8, false),
    (0x7034, false),
    (0x7004, true),
    (0x20d8, true),
    (0x2608, false),
];

/// A user batch storing each of [`USER_REGS`] at `va + 4k`.
fn read_user_regs(va: u64) -> CmdBuf {
    let mut b = CmdBuf::new();
    for (k, &(r, _)) in USER_REGS.iter().enumerate() {
        b.srm(r, Ppgtt, va + 4 * k as u64);
    }
    b.bb_end();
    b
}

fn user_regs_of(vm: &mut Vm, va: u64) -> Vec<u32> {
    let e = Engine::Rcs;
    let s = vm.g.submit(e, &read_user_regs(va)).unwrap();
    vm.g.wait(e, s, T).unwrap();
    let gpa = vm.g.ppgtt_gpa(va).unwrap();
    (0..USER_REGS.len()).map(|k| vm.r32(gpa + 4 * k as u64)).collect()
}

#[test]
fn non_privileged_state_stays_in_its_context() {
    // As IGT's gem_ctx_isolation: what one context writes into the registers a user batch may
    // write is saved with it, restored with it, and seen by no other context, here another vGPU's.
    let mut w = World::new();
    let e = Engine::Rcs;
    let victim_va = w.victim.g.data_va();
    let before = user_regs_of(&mut w.victim, victim_va);
    let mut b = CmdBuf::new();
    let pairs: Vec<(u32, u32)> =
        USER_REGS.iter().map(|&(r, masked)| (r, if masked { 0xffff_0000 | 0x0a5a } else { 0xdead_0000 | r })).collect();
    b.lri(&pairs).bb_end();
    let s = w.attacker.g.submit(e, &b).unwrap();
    w.attacker.g.wait(e, s, T).unwrap();
    let after = user_regs_of(&mut w.victim, victim_va);
    assert_eq!(after, before, "the victim's context sees none of the attacker's values");
    let va = w.attacker.g.data_va() + 0x100;
    let own = user_regs_of(&mut w.attacker, va);
    let want: Vec<u32> = pairs.iter().map(|&(_, v)| if v >> 16 == 0xffff { v & 0xffff } else { v }).collect();
    assert_eq!(own, want, "the attacker's own context kept its values");
    let stats = w.attacker.stats();
    assert_eq!((stats.dropped_total, stats.dropped_commands, w.attacker.stopped()), (0, 0, 0));
    w.assert_unharmed();
}

#[test]
fn non_privileged_batches_get_the_hardware_rules_not_refusals() {
    // What the hardware drops from a user batch runs as MI_NOOP: the batch goes on, the dropped
    // accesses are counted, nothing reaches the victim or the host.
    let mut w = World::new();
    let e = Engine::Rcs;
    let va = w.attacker.g.data_va();
    let mut b = CmdBuf::new();
    b.lri(&[(reg::GDRST, 1)])
        .lri(&[(e.mmio_base() + reg::ring::START, w.victim_gtt_canary.0 as u32)])
        .store_dword(Ggtt, w.victim_gtt_canary.0, 0xbad)
        .srm(e.mmio_base() + 0x600, Ggtt, w.victim_gtt_canary.0)
        .raw(&[0x0400_0000]) // MI_ARB_ON_OFF: off
        .store_dword(Ppgtt, va, 0x600d)
        .bb_end();
    let s = w.attacker.g.submit(e, &b).unwrap();
    w.attacker.g.wait(e, s, T).unwrap();
    assert_eq!(w.attacker.r32(w.attacker.g.ppgtt_gpa(va).unwrap()), 0x600d, "the batch ran to its end");
    let stats = w.attacker.stats();
    assert_eq!((stats.dropped_total, stats.dropped_commands, w.attacker.stopped()), (2, 3, 0));
    assert_eq!(stats.dropped_accesses.get(&(reg::GDRST, shadowgpu::cmd::regs::RegAccess::Write)), Some(&1));
    w.assert_unharmed();
}

#[test]
fn rewriting_a_batch_after_the_engine_fetched_it_changes_nothing() {
    // A privileged (GGTT) batch raises a flag, then waits on a semaphore; once the flag shows the
    // engine is in it (so it was fetched), the guest rewrites its rest into stores to the victim
    // and releases it. The fetched copy runs, not the rewrite.
    let mut w = World::new();
    let e = Engine::Bcs;
    let va = w.attacker.g.data_va();
    let (flag, sem) = (va + 0x100, va + 0x200);
    let (flag_gpa, sem_gpa) = (w.attacker.g.ppgtt_gpa(flag).unwrap(), w.attacker.g.ppgtt_gpa(sem).unwrap());
    w.attacker.w32(flag_gpa, 0);
    w.attacker.w32(sem_gpa, 0);
    let mut head = CmdBuf::new();
    head.store_dword(Ppgtt, flag, 1).semaphore_wait(Ppgtt, sem, 1);
    let mut b = head.clone();
    b.store_dword(Ppgtt, va, 0x600d).bb_end();
    let (gma, gpa) = w.attacker.g.gm_alloc(PAGE).unwrap();
    w.attacker.put(gpa, &b);
    let mut ring = CmdBuf::new();
    ring.bb_start(Ggtt, gma, false);
    let s = w.attacker.g.submit_ring(e, &ring).unwrap();
    let t0 = std::time::Instant::now();
    while w.attacker.r32(flag_gpa) != 1 {
        assert!(t0.elapsed() < T, "the batch never started");
        std::thread::yield_now();
    }
    let mut evil = head.clone();
    evil.store_dword(Ggtt, w.victim_gtt_canary.0, 0xbad).store_dword(Ggtt, w.victim_hidden_canary.0, 0xbad).bb_end();
    w.attacker.put(gpa, &evil);
    w.attacker.w32(sem_gpa, 1);
    w.attacker.g.wait(e, s, T).unwrap();
    w.assert_unharmed();
    assert_eq!(w.attacker.r32(w.attacker.g.ppgtt_gpa(va).unwrap()), 0x600d, "the copy ran");
    assert_eq!(w.attacker.stopped(), 0);
}

#[test]
fn a_batch_start_adding_bb_offset_is_refused_from_every_buffer() {
    // Gen9's Add Offset Enable jumps to the address plus BB_OFFSET, which a user batch may set:
    // the copy would start wherever the guest's offset from the shadow batch points, privileged.
    let e = Engine::Rcs;
    for buf in [Buffer::PpgttBatch, Buffer::Ring, Buffer::GgttBatch] {
        let mut w = World::new();
        let (evil, _) = evil_ring(&mut w);
        let mut b = CmdBuf::new();
        b.lri(&[(e.mmio_base() + 0x158, 0x1000)]).raw(&[0x1881_0001, evil as u32, 0]);
        mount(&mut w, e, buf, &b);
        w.assert_unharmed();
        assert_eq!(w.attacker.stopped(), 1, "{buf:?}: refused");
    }
}

#[test]
fn an_engine_context_that_restores_nothing_inherits_nothing() {
    // A guest whose engine context ends before its register lists (or holds none) would keep
    // what the previous context on the engine left in its registers: another vGPU's GPRs and
    // pipeline state. The shadow gives every engine context the clean context's structure.
    let e = Engine::Rcs;
    let mut w = World::new();
    let va = w.attacker.g.data_va();
    let s = w.attacker.g.submit(e, &read_user_regs(va)).unwrap();
    w.attacker.g.wait(e, s, T).unwrap();
    let mut secret = CmdBuf::new();
    let pairs: Vec<(u32, u32)> = USER_REGS.iter().map(|&(r, _)| (r, 0x5ec0_0000 | r)).collect();
    secret.lri(&pairs).bb_end();
    let s = w.victim.g.submit(e, &secret).unwrap();
    w.victim.g.wait(e, s, T).unwrap();
    for first in [MI_BATCH_BUFFER_END, 0x1100_0001] {
        // MI_BATCH_BUFFER_END first; or a one-register list where the engine's list starts.
        w.attacker.ctx_state(e, ENGINE_CONTEXT_DWORD, first);
        if first != MI_BATCH_BUFFER_END {
            w.attacker.ctx_state(e, ENGINE_CONTEXT_DWORD + 1, e.mmio_base() + 0x600);
            w.attacker.ctx_state(e, ENGINE_CONTEXT_DWORD + 2, 0);
            w.attacker.ctx_state(e, ENGINE_CONTEXT_DWORD + 3, MI_BATCH_BUFFER_END);
        }
        let got = user_regs_of(&mut w.attacker, va + 0x200);
        assert!(got.iter().all(|v| v >> 20 != 0x5ec), "{first:#x}: the victim's values leaked: {got:x?}");
    }
    w.assert_unharmed();
}
