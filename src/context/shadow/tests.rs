use super::*;
use crate::cmd::{GmRange, GmWindows, LinearTranslation, RingSpec, ScanLimits};
use crate::context::image::RingRegs;
use std::sync::Arc;
use vm_memory::GuestMemoryMmap;

/// The vGPU's aperture window: GGTT 0x10_0000.. maps guest 0x0.. linearly.
const AP: GmRange = GmRange::new(0x10_0000, 0x20_0000);
const LRCA: u64 = 0x12_0000;
const RCS_BASE: u32 = 0x2000;

fn windows() -> GmWindows {
    GmWindows { aperture: AP, hidden: GmRange::default() }
}

fn setup() -> (GuestMemoryMmap<()>, LinearTranslation) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), AP.size as usize)]).unwrap();
    let mut t = LinearTranslation::new();
    t.map(AddrSpace::Ggtt, AP, GuestAddress(0));
    (mem, t)
}

fn gpa(gma: u64) -> GuestAddress {
    GuestAddress(gma - AP.base)
}

/// Writes value dword `i` of the guest's register-state page.
fn put_state(mem: &GuestMemoryMmap<()>, i: usize, v: u32) {
    mem.write_obj(v, gpa(LRCA + PAGE_SIZE + 4 * i as u64)).unwrap();
}

fn params(engine: Engine) -> ScanParams {
    ScanParams {
        gen: Gen::Gen9,
        engine,
        windows: windows(),
        ring: RingSpec { start: 0, size: 4096, head: 0, tail: 0 },
        surfaces: AddrSpace::Ppgtt,
        hwsp: Some(LRCA),
        limits: ScanLimits::default(),
    }
}

/// The guest context as read at submission (CONTEXT_CONTROL and the engine context are read from
/// memory by populate).
fn guest() -> GuestContext {
    GuestContext {
        lrca: LRCA,
        ring: RingRegs {
            ring: RingSpec { start: 0x10_0000, size: 4096, head: 0xf00, tail: 0x40 },
            head_wrap: 7,
            ctl: 1,
        },
        pdps: [0x1000, 0, 0, 0],
        indirect_ctx: None,
        indirect_ctx_offset: 0,
        bb_per_ctx: None,
        bb_per_ctx_flags: 0,
    }
}

fn plan() -> ShadowPlan {
    ShadowPlan {
        ring_start: 0x8000_0000,
        ring_size: 0x20_0000,
        head: 0x100,
        tail: 0x180,
        root: ShadowRoot::L4(0x10_0000_5000),
        indirect_ctx: Some(0x8100_0000),
        bb_per_ctx: Some(0x8200_0000),
    }
}

/// A guest RCS image whose ring context holds hostile values and whose engine context is an
/// allowed register-load list followed by saved 3D state.
fn hostile_image(mem: &GuestMemoryMmap<()>) {
    put_state(mem, idx::CONTEXT_CONTROL, 0x0008_0008);
    put_state(mem, idx::RING_START, 0x1000); // outside the vGPU
    put_state(mem, 0x0f, 0x10_4000); // a batch to resume
    put_state(mem, 0x11, 0x20); // ... marked valid
    put_state(mem, idx::PDP3_UDW + 14, 0x7777_0000); // a raw guest PML4
    put_state(mem, idx::INDIRECT_CTX, 0x10_5000 | 2);
    put_state(mem, idx::BB_PER_CTX_PTR, 0x10_6000 | 1);
    put_state(mem, idx::INDIRECT_CTX_OFFSET, 0x26 << 6);
    put_state(mem, idx::CTX_TIMESTAMP, 1234);
    put_state(mem, 0x42, 0x6666); // the template's register address is kept
                                  // Engine context: LRI(2) of MI_MODE and a GPR, then a 3DSTATE_CLEAR_PARAMS, then zeros.
    let lri = [0x1100_1003, RCS_BASE + 0x9c, 0xffff_0000, RCS_BASE + 0x600, 5, 0x7804_0001, 0, 0];
    for (k, v) in lri.iter().enumerate() {
        put_state(mem, ENGINE_CONTEXT_DWORD + k, *v);
    }
    // Pages 2..21: a PIPE_CONTROL each whose flags (cache flushes) name the page.
    for p in 2..22u64 {
        mem.write_obj(0u32, gpa(LRCA + p * PAGE_SIZE)).unwrap();
        mem.write_obj(0x7a00_0004u32, gpa(LRCA + p * PAGE_SIZE + 8)).unwrap(); // PIPE_CONTROL header
        mem.write_obj([p as u32, 0, 0, 0, 0], gpa(LRCA + p * PAGE_SIZE + 12)).unwrap();
    }
}

#[test]
fn ring_context_is_the_hosts() {
    let (mem, t) = setup();
    hostile_image(&mem);
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
    let out = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    assert_eq!(out.pages_copied, 21);
    assert!(!out.skipped && out.scan.is_some());
    assert_eq!(s.state(idx::CONTEXT_CONTROL), 0xffff_0008);
    assert_eq!(s.state(idx::RING_START), 0x8000_0000);
    assert_eq!(s.state(idx::RING_CTL), (511 << 12) | 1);
    assert_eq!((s.state(idx::RING_HEAD), s.state(idx::RING_TAIL)), (0x100, 0x180));
    assert_eq!((s.state(0x0f), s.state(0x11)), (0, 0), "no guest batch is resumed");
    assert_eq!((s.state(idx::PDP3_UDW + 12), s.state(idx::PDP3_UDW + 14)), (0x10, 0x5000));
    assert_eq!(s.state(idx::INDIRECT_CTX), 0, "no indirect batch was scanned at submission");
    assert_eq!(s.state(idx::BB_PER_CTX_PTR), 0);
    assert_eq!(s.state(idx::INDIRECT_CTX_OFFSET), 0);
    assert_eq!(s.state(idx::CTX_TIMESTAMP), 1234);
    // Template: headers and register addresses, not the guest's.
    assert_eq!(s.state(0x01), 0x1100_101b);
    assert_eq!(s.state(0x02), RCS_BASE + 0x244);
    assert_eq!(s.state(0x32), RCS_BASE + 0x270);
    assert_eq!(s.state(0x42), RCS_BASE + 0xc8);
    // Engine context copied.
    assert_eq!(s.state(ENGINE_CONTEXT_DWORD + 3), RCS_BASE + 0x600);
    assert_eq!(s.image()[21 * 1024 + 3], 21);
}

const INHIBIT: u32 = 0x0001_0001;

/// The first register-state index (counted from the register-state page, into page 2) past the
/// clean context's last register list: what a guest writes from here is its own, and scanned.
fn free() -> usize {
    let list = lrc::render_state_list(Gen::Gen9, Engine::Rcs).unwrap();
    list.value_index(list.regs.len() - 1) + 1
}

#[test]
fn every_engine_context_gets_the_clean_structure() {
    // An engine context that would restore nothing (MI_BATCH_BUFFER_END first), or a list cut
    // short, still restores every register the clean context does: its values are the guest's,
    // its headers and register dwords the clean context's.
    let (mem, t) = setup();
    hostile_image(&mem);
    put_state(&mem, ENGINE_CONTEXT_DWORD, 0x0500_0000);
    put_state(&mem, ENGINE_CONTEXT_DWORD + 1, 0x1100_1001);
    put_state(&mem, ENGINE_CONTEXT_DWORD + 3, 0x77);
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
    s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    let clean = blank_engine_context(Gen::Gen9, Engine::Rcs);
    let list = lrc::engine_context_list(Gen::Gen9, Engine::Rcs);
    assert_eq!(s.state(ENGINE_CONTEXT_DWORD), 0, "MI_NOOP where the clean context has one");
    assert_eq!(s.state(list.header), clean[list.header - ENGINE_CONTEXT_DWORD]);
    assert_eq!(s.state(list.value_index(0) - 1), RCS_BASE + 0x28);
    assert_eq!(s.state(list.value_index(0)), 0x77, "values are the guest's");
    let render = lrc::render_state_list(Gen::Gen9, Engine::Rcs).unwrap();
    assert_eq!(s.state(render.header), lrc::lri_header(render.regs.len()));
}

#[test]
fn copies_are_skipped_when_they_cannot_matter() {
    let (mem, t) = setup();
    hostile_image(&mem);
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
    put_state(&mem, idx::CONTEXT_CONTROL, INHIBIT);
    let inhibit = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    assert_eq!((inhibit.pages_copied, inhibit.skipped, inhibit.clean, inhibit.scan), (1, true, true, None));
    put_state(&mem, idx::CONTEXT_CONTROL, 0);
    s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    // The guest scribbles on page 5 of its (running) image: the shadow keeps the engine's state.
    mem.write_obj(0xdead_beefu32, gpa(LRCA + 5 * PAGE_SIZE + 12)).unwrap();
    let same = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    assert_eq!((same.pages_copied, same.skipped, same.scan), (1, true, None));
    assert_eq!(s.image()[5 * 1024 + 3], 5);
    // A change in the state page is rescanned.
    put_state(&mem, ENGINE_CONTEXT_DWORD + 5, 6);
    let rescanned = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    assert!(rescanned.skipped && rescanned.scan.is_some());
    assert_eq!(s.state(ENGINE_CONTEXT_DWORD + 5), 6);
}

#[test]
fn a_restore_inhibit_populate_marks_nothing_as_scanned() {
    let (mem, t) = setup();
    hostile_image(&mem);
    // A register the allow-list denies, in the engine context of a restore-inhibit submission:
    // never loaded (the clean context is) ...
    put_state(&mem, free(), 0x1100_1001);
    put_state(&mem, free() + 1, RCS_BASE + 0x80);
    put_state(&mem, idx::CONTEXT_CONTROL, INHIBIT);
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
    s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    // ... so the same context resubmitted without inhibit, before any write-back, is copied and
    // scanned in full.
    put_state(&mem, idx::CONTEXT_CONTROL, 0);
    let r = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs));
    assert!(matches!(r, Err(ShadowContextError::Scan(_))), "{r:?}");
}

#[test]
fn a_restore_inhibit_context_loads_the_clean_engine_context() {
    let (mem, t) = setup();
    hostile_image(&mem);
    // The guest's engine context would point the ring somewhere of its choosing.
    let lri = [0x1100_1005, RCS_BASE + 0x38, 0x10_8000, RCS_BASE + 0x34, 0, RCS_BASE + 0x30, 0x40];
    for (k, v) in lri.iter().enumerate() {
        put_state(&mem, ENGINE_CONTEXT_DWORD + 1 + k, *v);
    }
    put_state(&mem, idx::CONTEXT_CONTROL, 0x0009_0009); // restore inhibit, synchronous switch inhibit
    let mut clean = blank_engine_context(Gen::Gen9, Engine::Rcs);
    clean[2] = 0xc1ea_0000; // a marker in the first value dword
    let clean: Arc<[u32]> = clean.into();
    let mut s = ShadowContext::new(Gen::Gen9, Engine::Rcs, clean.clone());
    let out = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    assert!(out.clean && out.scan.is_none());
    assert_eq!(s.parts().1, &clean[..], "the whole engine context is the host's");
    assert_eq!(s.state(idx::CONTEXT_CONTROL), 0xffff_0008, "inhibit cleared, the guest's other bits kept");
    assert_eq!(s.state(idx::RING_START), 0x8000_0000);
    // The same guest context without inhibit is scanned like any other: its ring-register load
    // is refused.
    put_state(&mem, idx::CONTEXT_CONTROL, 0x0008_0008);
    let r = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs));
    assert!(matches!(r, Err(ShadowContextError::Scan(_))), "{r:?}");
}

#[test]
fn workaround_fields_come_from_the_read_the_batches_were_scanned_with() {
    let (mem, t) = setup();
    hostile_image(&mem);
    let mut g = guest();
    g.indirect_ctx = Some((0x10_5000, 128));
    g.indirect_ctx_offset = 0x26 << 6;
    g.bb_per_ctx = Some(0x10_6000);
    g.bb_per_ctx_flags = 1;
    // The guest changes its image after submission: a bigger indirect batch, other flags.
    put_state(&mem, idx::INDIRECT_CTX, 0x10_5000 | 0x3f);
    put_state(&mem, idx::INDIRECT_CTX_OFFSET, 0);
    put_state(&mem, idx::BB_PER_CTX_PTR, 0x10_6000 | 0xfff);
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
    s.populate(&mem, &t, &g, &plan(), &params(Engine::Rcs)).unwrap();
    assert_eq!(s.state(idx::INDIRECT_CTX), 0x8100_0000 | 2);
    assert_eq!(s.state(idx::INDIRECT_CTX_OFFSET), 0x26 << 6);
    assert_eq!(s.state(idx::BB_PER_CTX_PTR), 0x8200_0000 | 1);
}

#[test]
fn engine_context_is_scanned() {
    let cases: [(&[u32], &str); 4] = [
        (&[0x1100_1001, RCS_BASE + 0x80, 0x1000], "status page address"),
        (&[0x1100_1001, RCS_BASE + 0x270, 0x1000], "page-table root"),
        (&[0x1880_0001, 0x10_4000, 0], "batch start"),
        (&[0x0f00_0000], "unknown command"),
    ];
    for (cmds, what) in cases {
        let (mem, t) = setup();
        hostile_image(&mem);
        for (k, v) in cmds.iter().enumerate() {
            put_state(&mem, free() + k, *v);
        }
        let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
        let r = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs));
        assert!(matches!(r, Err(ShadowContextError::Scan(_))), "{what}: {r:?}");
        // A failure forgets the last context: the next populate copies and scans again.
        put_state(&mem, free(), 0);
        let again = s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs));
        assert!(again.is_err() || !again.unwrap().skipped, "{what}");
    }
}

#[test]
fn batch_end_in_the_image_keeps_its_size() {
    let (mem, t) = setup();
    hostile_image(&mem);
    put_state(&mem, free(), 0x0500_0000); // MI_BATCH_BUFFER_END
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
    s.populate(&mem, &t, &guest(), &plan(), &params(Engine::Rcs)).unwrap();
    assert_eq!(s.image().len(), 22 * 1024);
    assert_eq!(s.parts().1.len(), 22 * 1024 - 0x450);
    assert_eq!(s.image()[21 * 1024 + 3], 0, "what follows the end is not scanned, so it is not loaded");
}

#[test]
fn write_back_reports_progress_to_the_guest() {
    let (mem, t) = setup();
    hostile_image(&mem);
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Rcs);
    let g = guest();
    s.populate(&mem, &t, &g, &plan(), &params(Engine::Rcs)).unwrap();
    // The engine saves new state.
    *s.image_dword_mut(7 * 1024 + 3).unwrap() = 0xabcd;
    s.set_state(idx::CTX_TIMESTAMP, 99);
    let head = s.write_back(&mem, &t, &g).unwrap();
    assert_eq!(head, (8 << 21) | 0x40, "tail < head: the wrap count advances");
    let read = |gma: u64| mem.read_obj::<u32>(gpa(gma)).unwrap();
    assert_eq!(read(LRCA + PAGE_SIZE + 4 * idx::RING_HEAD as u64), head);
    assert_eq!(read(LRCA + PAGE_SIZE + 4 * idx::CTX_TIMESTAMP as u64), 99);
    assert_eq!(read(LRCA + 7 * PAGE_SIZE + 12), 0xabcd);
    assert_eq!(read(LRCA + PAGE_SIZE + 4 * idx::RING_START as u64), 0x1000, "ring context not written back");
    // Resubmitting the written-back context copies nothing and scans nothing.
    let again = s.populate(&mem, &t, &g, &plan(), &params(Engine::Rcs)).unwrap();
    assert_eq!((again.skipped, again.scan), (true, None));
    // Wrap count 2047 wraps to 0.
    let mut g2 = g;
    g2.ring.head_wrap = 2047;
    assert_eq!(s.write_back(&mem, &t, &g2).unwrap(), 0x40);
}

#[test]
fn bad_plans_and_images() {
    let (mem, t) = setup();
    hostile_image(&mem);
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Vcs);
    assert_eq!(s.image().len(), 2048);
    let mut p = plan();
    p.ring_start = 0x8000_0800;
    assert!(matches!(s.populate(&mem, &t, &guest(), &p, &params(Engine::Vcs)), Err(ShadowContextError::BadPlan(_))));
    let mut g = guest();
    g.lrca = AP.end() - PAGE_SIZE; // page 1 is past the window
    assert_eq!(
        s.populate(&mem, &t, &g, &plan(), &params(Engine::Vcs)),
        Err(ShadowContextError::Image(ContextError::Unmapped(AP.end())))
    );
    // A blitter context keeps its tile register.
    put_state(&mem, 0x43, 0x55);
    for k in 0..8 {
        put_state(&mem, ENGINE_CONTEXT_DWORD + k, 0);
    }
    let mut b = ShadowContext::with_blank_clean(Gen::Gen8, Engine::Bcs);
    b.populate(&mem, &t, &guest(), &plan(), &params(Engine::Bcs)).unwrap();
    assert_eq!(b.state(0x43), 0x55);
    assert_eq!(b.state(0x44), 0x22000 + 0x28, "Gen8 xCS template has RING_EXCC");
    assert_eq!(b.state(idx::INDIRECT_CTX), 0, "Gen8 xCS has no workaround batches");
}
