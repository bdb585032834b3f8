//! Unit tests of the scanner, one group per command family.

use super::emit::{CmdBuf, PostSync};
use super::image::GmImage;
use super::*;
use crate::hw::{Engine, Gen};

use AddrSpace::{Ggtt, Ppgtt};

const APERTURE: GmRange = GmRange::new(0x10_0000, 0x10_0000);
const HIDDEN: GmRange = GmRange::new(0x100_0000, 0x10_0000);
const RING: u64 = 0x10_0000;
const BATCH: u64 = 0x10_8000;
const TARGET: u64 = 0x18_0000;

struct Case {
    engine: Engine,
    gen: Gen,
    surfaces: AddrSpace,
    hwsp: Option<u64>,
    limits: ScanLimits,
    extra: Vec<(AddrSpace, u64, Vec<u32>)>,
}

fn case() -> Case {
    Case {
        engine: Engine::Rcs,
        gen: Gen::Gen9,
        surfaces: Ppgtt,
        hwsp: None,
        limits: ScanLimits::default(),
        extra: vec![],
    }
}

impl Case {
    fn on(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }
    fn ggtt_surfaces(mut self) -> Self {
        self.surfaces = Ggtt;
        self
    }
    fn with(mut self, space: AddrSpace, gma: u64, b: &CmdBuf) -> Self {
        self.extra.push((space, gma, b.dwords.clone()));
        self
    }
    fn scan(&self, ring: &CmdBuf) -> Result<ScannedWorkload, ScanError> {
        let mut ring = ring.clone();
        ring.align_qword();
        let mut b = GmImage::builder();
        b.place_dwords(Ggtt, RING, &ring.dwords);
        for (s, g, d) in &self.extra {
            b.place_dwords(*s, *g, d);
        }
        let img = b.build().unwrap();
        let params = ScanParams {
            gen: self.gen,
            engine: self.engine,
            surfaces: self.surfaces,
            hwsp: self.hwsp,
            limits: self.limits,
            ..params(RingSpec { start: RING, size: 0x8000, head: 0, tail: ring.len_bytes() as u32 })
        };
        scan_ring(&img.mem, &img.xlate, &params, &mut ())
    }
}

/// Render-engine parameters over the test windows, for `ring`.
fn params(ring: RingSpec) -> ScanParams {
    ScanParams {
        gen: Gen::Gen9,
        engine: Engine::Rcs,
        windows: GmWindows { aperture: APERTURE, hidden: HIDDEN },
        ring,
        surfaces: Ppgtt,
        hwsp: None,
        limits: ScanLimits::default(),
    }
}

fn reason(r: Result<ScannedWorkload, ScanError>) -> Reason {
    r.expect_err("stream should be rejected").reason
}

fn ring() -> CmdBuf {
    CmdBuf::new()
}

#[test]
fn empty_ring_and_noop_runs() {
    let w = case().scan(ring().noop(64)).unwrap();
    assert_eq!(w.stats.noops, 64);
    assert_eq!(w.stats.commands, 0);
    assert_eq!(w.ring.dwords, vec![0; 64]);
}

#[test]
fn ring_wraps_around_with_a_command_across_the_end() {
    // A 4 KiB ring whose head is 8 bytes before the end: the 4-dword store straddles the wrap.
    let mut cmds = CmdBuf::new();
    cmds.store_dword(Ggtt, TARGET, 7).user_interrupt().noop(1);
    let bytes = cmds.to_bytes();
    let mut ring_page = vec![0u8; 4096];
    ring_page[4088..].copy_from_slice(&bytes[..8]);
    ring_page[..bytes.len() - 8].copy_from_slice(&bytes[8..]);
    let img = GmImage::builder().place(Ggtt, RING, ring_page).build().unwrap();
    let params = params(RingSpec { start: RING, size: 4096, head: 4088, tail: (bytes.len() - 8) as u32 });
    let w = scan_ring(&img.mem, &img.xlate, &params, &mut ()).unwrap();
    assert_eq!(&w.ring.dwords[..4], &cmds.dwords[..4]);
    assert_eq!(w.stats.commands, 2);
    assert!(w.events.contains(Events::USER_INTERRUPT));
}

#[test]
fn bad_ring_registers() {
    let img = GmImage::builder().place(Ggtt, RING, vec![0; 4096]).build().unwrap();
    let base = params(RingSpec { start: RING, size: 4096, head: 0, tail: 8 });
    for ring in [
        RingSpec { start: RING + 4, ..base.ring },
        RingSpec { size: 4095, ..base.ring },
        RingSpec { size: 4 << 20, ..base.ring },
        RingSpec { tail: 4096, ..base.ring },
        RingSpec { tail: 4, ..base.ring },
        RingSpec { start: 0x1000, ..base.ring },
        RingSpec { start: APERTURE.end() - 4096, size: 8192, ..base.ring },
    ] {
        let p = ScanParams { ring, ..base };
        assert!(scan_ring(&img.mem, &img.xlate, &p, &mut ()).is_err(), "{ring:?}");
    }
}

#[test]
fn user_interrupt_becomes_noop_and_an_event() {
    let w = case().scan(ring().user_interrupt().user_interrupt()).unwrap();
    assert_eq!(w.ring.dwords, vec![0, 0]);
    assert_eq!(w.events, Events::USER_INTERRUPT);
    assert_eq!(w.stats.patched, 2);
}

#[test]
fn store_data_imm_audit() {
    assert!(case().scan(ring().store_dword(Ggtt, TARGET, 1)).is_ok());
    assert!(case().scan(ring().store_qword(Ggtt, HIDDEN.base, 1)).is_ok());
    assert!(matches!(
        reason(case().scan(ring().store_dword(Ggtt, 0x1000, 1))),
        Reason::AddressOutsideWindows { addr: 0x1000, size: 4, .. }
    ));
    // The last dword of the aperture is fine for a dword store, a qword store straddles its end.
    assert!(case().scan(ring().store_dword(Ggtt, APERTURE.end() - 4, 1)).is_ok());
    assert!(case().scan(ring().store_qword(Ggtt, APERTURE.end() - 4, 1)).is_err());
    // High bits of the address count.
    assert!(case().scan(ring().store_dword(Ggtt, TARGET | 1 << 32, 1)).is_err());
    // PPGTT stores are bounded by the shadow PPGTT, not by the GGTT windows.
    assert!(case().scan(ring().store_dword(Ppgtt, 0x1000, 1)).is_ok());
}

#[test]
fn register_audit() {
    assert!(case().scan(ring().lri(&[(0x2600, 1), (0x7004, 2), (0x2418, 3)])).is_ok());
    assert!(matches!(
        reason(case().scan(ring().lri(&[(0x2600, 1), (0x2034, 0)]))),
        Reason::RegisterNotAllowed { reg: 0x2034, access: regs::RegAccess::Write }
    ));
    assert!(case().scan(ring().srm(0x2358, Ggtt, TARGET)).is_ok());
    assert!(case().scan(ring().srm(0x2038, Ggtt, TARGET)).is_err());
    assert!(case().scan(ring().lrm(0x2438, Ggtt, TARGET)).is_ok());
    assert!(case().scan(ring().lrm(0x2358, Ggtt, TARGET)).is_err(), "timestamps are read-only");
    assert!(case().scan(ring().lrm(0x2438, Ggtt, 0x1000)).is_err(), "source outside the windows");
    assert!(case().scan(ring().lrr(0x2350, 0x2600)).is_ok());
    assert!(case().scan(ring().lrr(0x2600, 0x2080)).is_err());
    // The video engine cannot write render registers.
    assert!(case().on(Engine::Vcs).scan(ring().lri(&[(0x2600, 1)])).is_err());
    assert!(case().on(Engine::Vcs).scan(ring().lri(&[(0x1_2600, 1)])).is_ok());
    // LRI length must be 1 + 2n.
    assert!(matches!(reason(case().scan(ring().raw(&[0x1100_0002, 0x2600, 0, 0]))), Reason::BadLength { .. }));
}

#[test]
fn force_nonpriv_values_are_filtered() {
    assert!(case().scan(ring().lri(&[(0x24d0, 0x2350)])).is_ok());
    assert!(matches!(
        reason(case().scan(ring().lri(&[(0x24d0, 0x2080)]))),
        Reason::NonprivValue { reg: 0x24d0, value: 0x2080 }
    ));
    assert!(case().scan(ring().lrm(0x24d0, Ggtt, TARGET)).is_err());
}

#[test]
fn page_table_roots_are_recorded_and_host_registers_discarded() {
    let w = case().scan(ring().noop(2).lri(&[(0x2274, 0), (0x2270, 0x1000)])).unwrap();
    assert_eq!(
        w.root_loads,
        vec![
            RootLoad { buffer: 0, cmd: 2, dword: 4, reg: 0x2274 },
            RootLoad { buffer: 0, cmd: 2, dword: 6, reg: 0x2270 }
        ]
    );
    // A host register alone: the whole command becomes MI_NOOPs.
    let w = case().scan(ring().lri(&[(0x4_4050, 0)])).unwrap();
    assert_eq!(&w.ring.dwords[..3], &[0, 0, 0]);
    // Beside an allowed register: the pair repeats the allowed load.
    let w = case().scan(ring().lri(&[(0x4_4050, 0), (0x2600, 5)])).unwrap();
    assert_eq!(&w.ring.dwords[..5], &[0x1100_0003, 0x2600, 5, 0x2600, 5]);
    assert_eq!(w.stats.patched, 1);
    assert!(case().scan(ring().lrr(0x2600, 0x2270)).is_err());
}

#[test]
fn pipe_control() {
    let pc = |flags, post, space, addr, notify| {
        let mut b = ring();
        b.pipe_control(flags, post, space, addr, 0, notify);
        b
    };
    assert!(case().scan(&pc(0, PostSync::WriteImmediate, Ggtt, TARGET, false)).is_ok());
    assert!(case().scan(&pc(0, PostSync::WriteTimestamp, Ggtt, 0x2000, false)).is_err());
    assert!(case().scan(&pc(0, PostSync::WriteDepthCount, Ggtt, APERTURE.end() - 4, false)).is_err());
    assert!(case().scan(&pc(0, PostSync::WriteImmediate, Ppgtt, 0x2000, false)).is_ok());
    // Notify is removed from the copy and raised at completion.
    let w = case().scan(&pc(0, PostSync::None, Ggtt, 0, true)).unwrap();
    assert_eq!(w.ring.dwords[1] & (1 << 8), 0);
    assert_eq!(w.events, Events::PIPE_CONTROL_NOTIFY);
    // LRI post-sync writes a register: audited like an LRI. It excludes a memory post-sync (Mesa
    // asserts "mutually exclusive"); the address dword cannot be both.
    assert!(case().scan(&pc(1 << 23, PostSync::None, Ggtt, 0x2600, false)).is_ok());
    assert!(case().scan(&pc(1 << 23, PostSync::None, Ggtt, 0x2080, false)).is_err());
    let both = case().scan(&pc(1 << 23, PostSync::WriteImmediate, Ggtt, 0x2600, false));
    assert!(matches!(reason(both), Reason::Undefined(_)));
}

#[test]
fn store_index_is_redirected_to_the_guest_status_page() {
    let mut b = ring();
    b.pipe_control(1 << 21, PostSync::WriteImmediate, Ppgtt, 0x40, 5, false);
    assert!(matches!(reason(case().scan(&b)), Reason::HwspIndex(0x40)));
    let mut c = case();
    c.hwsp = Some(0x10_2000);
    let w = c.scan(&b).unwrap();
    assert_eq!(w.ring.dwords[1] & (1 << 21), 0);
    assert_ne!(w.ring.dwords[1] & (1 << 24), 0);
    assert_eq!(w.ring.dwords[2], 0x10_2040);
    let mut f = ring();
    f.flush_dw(PostSync::WriteImmediate, Ppgtt, 0x80, 1, false, false);
    f.dwords[0] |= 1 << 21;
    let w = c.on(Engine::Bcs).scan(&f).unwrap();
    assert_eq!(w.ring.dwords[1], 0x10_2080 | 4);
}

#[test]
fn flush_dw_is_audited_in_both_lengths() {
    for qword in [false, true] {
        let mut ok = ring();
        ok.flush_dw(PostSync::WriteImmediate, Ggtt, TARGET, 1, qword, true);
        let w = case().on(Engine::Bcs).scan(&ok).unwrap();
        assert_eq!(w.events, Events::FLUSH_DW_NOTIFY);
        assert_eq!(w.ring.dwords[0] & (1 << 8), 0);
        let mut bad = ring();
        bad.flush_dw(PostSync::WriteImmediate, Ggtt, 0x3000, 1, qword, false);
        assert!(case().on(Engine::Vcs).scan(&bad).is_err(), "qword={qword}");
    }
}

#[test]
fn other_memory_commands() {
    assert!(case().scan(ring().atomic(7, 1, Ggtt, TARGET)).is_ok());
    assert!(case().scan(ring().atomic(7, 1, Ggtt, APERTURE.end() - 4)).is_err());
    // The access covers the larger of the Data Size field and the opcode's own size: a qword
    // MOVE (0x24) or an octword one (0x44) marked "dword" still writes 8 or 16 bytes.
    assert!(case().scan(ring().atomic(0x04, 0, Ggtt, APERTURE.end() - 4)).is_ok());
    assert!(case().scan(ring().atomic(0x24, 0, Ggtt, APERTURE.end() - 4)).is_err());
    assert!(case().scan(ring().atomic(0x44, 1, Ggtt, APERTURE.end() - 8)).is_err());
    assert!(case().scan(ring().semaphore_wait(Ggtt, TARGET, 1)).is_ok());
    assert!(case().scan(ring().semaphore_wait(Ggtt, 0x1000, 1)).is_err());
    assert!(case().scan(ring().copy_mem_mem(Ggtt, TARGET, Ggtt, TARGET + 64)).is_ok());
    assert!(case().scan(ring().copy_mem_mem(Ggtt, TARGET, Ggtt, 0x40)).is_err());
    assert!(case().scan(ring().copy_mem_mem(Ppgtt, 0x40, Ggtt, TARGET)).is_ok());
    // MI_REPORT_PERF_COUNT writes a 256-byte report.
    assert!(case().scan(ring().raw(&[0x1400_0002, (TARGET as u32) | 1, 0, 0])).is_ok());
    assert!(case().scan(ring().raw(&[0x1400_0002, (APERTURE.end() as u32 - 64) | 1, 0, 0])).is_err());
    // MI_CONDITIONAL_BATCH_BUFFER_END reads its compare address.
    assert!(case().scan(ring().raw(&[0x1b40_0002, 0, TARGET as u32, 0])).is_ok());
    assert!(case().scan(ring().raw(&[0x1b40_0002, 0, 0x3000, 0])).is_err());
    // MI_MATH has no operands in memory.
    assert!(case().scan(ring().math(&[0x0010_0000, 0x0200_0000])).is_ok());
}

#[test]
fn privileged_commands_are_rejected() {
    for dws in [
        &[0x0c00_0000u32, 0x10_0000][..], // MI_SET_CONTEXT
        &[0x1180_0001, 0, 0][..],         // MI_UPDATE_GTT
        &[0x0a00_0001, 0, 0x10_0000][..], // MI_DISPLAY_FLIP
        &[0x0900_0000, 0][..],            // MI_LOAD_SCAN_LINES_INCL
        &[0x1080_0001, 0x40, 0][..],      // MI_STORE_DATA_INDEX
    ] {
        assert!(matches!(reason(case().scan(ring().raw(dws))), Reason::Privileged(_)), "{:#x}", dws[0]);
    }
}

#[test]
fn wait_for_event_and_report_head_are_neutralised() {
    let w = case().scan(ring().raw(&[0x0180_0000, 0x0380_0000])).unwrap();
    assert_eq!(w.ring.dwords, vec![0, 0]);
}

#[test]
fn unknown_and_wrong_engine() {
    assert!(matches!(reason(case().scan(ring().raw(&[0x3000_0000, 0]))), Reason::UnknownCommand { .. }));
    assert!(matches!(
        reason(case().on(Engine::Bcs).scan(ring().raw(&[0x0480_0000, 0]))),
        Reason::WrongEngine(Engine::Bcs)
    ));
    // A 3D command on the blitter, a blit on render.
    assert!(case().on(Engine::Bcs).scan(ring().raw(&[0x7a00_0004, 0, 0, 0, 0, 0])).is_err());
    assert!(case().scan(ring().xy_color(TARGET, 64, 4, 4, 0)).is_err());
}

#[test]
fn truncated_command_in_the_ring() {
    let r = case().scan(ring().raw(&[0x1000_0002, TARGET as u32]));
    assert!(matches!(reason(r), Reason::Truncated { len: 4, available: 2 }));
}

#[test]
fn batches_chains_and_second_level() {
    let l2 = 0x10_c000;
    let chained = 0x10_a000;
    let mut b1 = CmdBuf::new();
    b1.store_dword(Ggtt, TARGET, 1).bb_start(Ggtt, l2, true).bb_start(Ggtt, chained, false);
    let mut b2 = CmdBuf::new();
    b2.user_interrupt().bb_end();
    let mut lvl2 = CmdBuf::new();
    lvl2.store_dword(Ggtt, TARGET + 4, 2).bb_end();
    let c = case().with(Ggtt, BATCH, &b1).with(Ggtt, chained, &b2).with(Ggtt, l2, &lvl2);
    let mut w = c.scan(ring().bb_start(Ggtt, BATCH, false).store_dword(Ggtt, TARGET, 3)).unwrap();
    assert_eq!(w.batches.len(), 3);
    assert_eq!(w.relocs.len(), 3);
    assert!(w.events.contains(Events::USER_INTERRUPT));
    // Every copy ends at its BB_END or chaining BB_START, not at the page end.
    let lens: Vec<usize> = w.batches.iter().map(|b| b.dwords.len()).collect();
    assert!(lens.contains(&(4 + 3 + 3)) && lens.contains(&2) && lens.contains(&5), "{lens:?}");
    // Relocation points each batch start at its shadow.
    w.relocate(|i, _| 0x4000_0000 + (i as u64) * 0x1000);
    for r in &w.relocs {
        let buf = w.buffer(r.buffer).unwrap();
        assert_eq!(buf.dwords[r.dword + 1], 0x4000_0000 + (r.target as u32) * 0x1000);
        assert_eq!(buf.dwords[r.dword + 2], 0);
        assert_eq!(buf.dwords[r.dword] & (1 << 8), 0, "shadow batches are GGTT batches");
    }
}

#[test]
fn fetching_leaves_ring_batches_to_the_engine_and_turns_loops_into_fetch_points() {
    let l2 = 0x10_c000;
    let chained = 0x10_a000;
    // B1 calls L2 twice (one copy), chains to B2; B2 loops back to B1.
    let mut b1 = CmdBuf::new();
    b1.bb_start(Ggtt, l2, true).bb_start(Ggtt, l2, true).bb_start(Ggtt, chained, false);
    let mut b2 = CmdBuf::new();
    b2.raw(&[0x0280_0000]).bb_start(Ggtt, BATCH, false);
    let mut lvl2 = CmdBuf::new();
    lvl2.store_dword(Ggtt, TARGET, 2).user_interrupt().bb_end();
    let c = case().with(Ggtt, BATCH, &b1).with(Ggtt, chained, &b2).with(Ggtt, l2, &lvl2);
    let mut r = ring();
    r.bb_start(Ggtt, BATCH, false).store_dword(Ggtt, TARGET, 3).bb_start(Ppgtt, 0x5000, false).align_qword();
    let mut b = GmImage::builder();
    b.place_dwords(Ggtt, RING, &r.dwords);
    for (s, g, d) in &c.extra {
        b.place_dwords(*s, *g, d);
    }
    let img = b.build().unwrap();
    let p = params(RingSpec { start: RING, size: 0x8000, head: 0, tail: r.len_bytes() as u32 });
    // The ring: no batch copied, both starts fetch points (the PPGTT one need not be mapped yet).
    let w = scan_fetching(&img.mem, &img.xlate, &p, &mut ()).unwrap();
    assert!(w.batches.is_empty() && w.relocs.is_empty());
    let first = FetchPoint { buffer: 0, dword: 0, space: Ggtt, gma: BATCH, level: 1 };
    assert_eq!(w.fetches, [first, FetchPoint { buffer: 0, dword: 7, space: Ppgtt, gma: 0x5000, level: 1 }]);
    // Fetching B1: B1, L2 (once) and B2 copied; B2's jump back into B1 is a fetch point again.
    let t = scan_fetch(&img.mem, &img.xlate, &p, &first, &mut ()).unwrap();
    let kinds: Vec<_> = t.batches.iter().map(|b| b.kind).collect();
    assert_eq!(kinds[0], BufferKind::Batch { level: 1, space: Ggtt, gma: BATCH });
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(t.relocs.len(), 3, "two calls of L2, one chain");
    let b2_id = 1 + kinds.iter().position(|k| *k == BufferKind::Batch { level: 1, space: Ggtt, gma: chained }).unwrap();
    assert_eq!(t.fetches, [FetchPoint { buffer: b2_id, dword: 1, space: Ggtt, gma: BATCH, level: 1 }]);
    assert!(t.events.contains(Events::USER_INTERRUPT));
    // An eager scan copies the same tree with the loop inside the copy (a fourth relocation).
    let e = c.scan(ring().bb_start(Ggtt, BATCH, false)).unwrap();
    assert_eq!((e.batches.len(), e.relocs.len(), e.fetches.len()), (3, 5, 0));
    // Resolving the fetch points at once: the tree's loop runs in its copy. A tree whose loop has
    // no copy in it is refused, and nothing changes.
    let mut eager = w.clone();
    let mut broken = t.clone();
    broken.fetches[0].gma = 0x10_e000;
    let other = scan_fetch(&img.mem, &img.xlate, &p, &first, &mut ()).unwrap();
    assert!(!eager.absorb_fetches(vec![broken, other.clone()]));
    assert_eq!(eager, w);
    let mut l2_only = other.clone();
    l2_only.batches.truncate(1);
    l2_only.fetches.clear();
    l2_only.relocs.clear();
    assert!(eager.absorb_fetches(vec![t.clone(), l2_only]));
    assert!(eager.fetches.is_empty());
    assert_eq!(eager.batches.len(), 4);
    // The ring's two starts, the tree's three relocations and its loop back to its own B1 copy.
    assert_eq!(eager.relocs.len(), 2 + 3 + 1);
    assert!(eager.relocs.contains(&Reloc { buffer: b2_id, dword: 1, target: 0 }));
    // A fetch of something unmapped, or of a bad level, is refused with where and why.
    let bad = FetchPoint { gma: 0x5000, space: Ppgtt, ..first };
    assert!(matches!(scan_fetch(&img.mem, &img.xlate, &p, &bad, &mut ()).unwrap_err().reason, Reason::Unmapped { .. }));
    let bad = FetchPoint { level: 3, ..first };
    assert!(matches!(scan_fetch(&img.mem, &img.xlate, &p, &bad, &mut ()).unwrap_err().reason, Reason::Nesting(_)));
}

#[test]
fn nesting_rules() {
    let mut to_l2 = CmdBuf::new();
    to_l2.bb_start(Ggtt, 0x10_c000, true).bb_end();
    let mut l3 = CmdBuf::new();
    l3.bb_start(Ggtt, 0x10_e000, true).bb_end();
    let mut end = CmdBuf::new();
    end.bb_end();
    // Second level from the ring.
    assert!(matches!(reason(case().scan(ring().bb_start(Ggtt, BATCH, true))), Reason::Nesting(_)));
    // A third level.
    let c = case().with(Ggtt, BATCH, &to_l2).with(Ggtt, 0x10_c000, &l3).with(Ggtt, 0x10_e000, &end);
    assert!(matches!(reason(c.scan(ring().bb_start(Ggtt, BATCH, false))), Reason::Nesting(_)));
    // A PPGTT batch cannot start a GGTT one: the start is taken in the PPGTT, where nothing is
    // mapped at that address here.
    let mut up = CmdBuf::new();
    up.bb_start(Ggtt, 0x10_e000, false);
    let c = case().with(Ppgtt, 0x5000, &up).with(Ggtt, 0x10_e000, &end);
    assert!(matches!(
        reason(c.scan(ring().bb_start(Ppgtt, 0x5000, false))),
        Reason::Unmapped { space: Ppgtt, gma: 0x10_e000 }
    ));
    // BB_END in the ring.
    assert!(matches!(reason(case().scan(ring().bb_end())), Reason::Nesting(_)));
}

#[test]
fn batch_starts_whose_target_the_scan_cannot_know_are_refused() {
    // Gen9's Add Offset Enable adds BB_OFFSET (a register the guest sets) to the target; the
    // Resource Streamer fetches on its own. From any buffer.
    for bits in [1u32 << 16, 1 << 10] {
        let mut up = CmdBuf::new();
        up.raw(&[0x1880_0101 | bits, 0x5000, 0]);
        let mut inner = CmdBuf::new();
        inner.bb_end();
        let c = case().with(Ppgtt, 0x6000, &up).with(Ppgtt, 0x5000, &inner);
        assert!(matches!(reason(c.scan(ring().bb_start(Ppgtt, 0x6000, false))), Reason::Undefined(_)), "{bits:#x}");
        let c = case().with(Ppgtt, 0x5000, &inner);
        assert!(matches!(reason(c.scan(ring().raw(&[0x1880_0101 | bits, 0x5000, 0]))), Reason::Undefined(_)));
    }
    // Gen8 has no Add Offset Enable: bit 16 is reserved there and left alone.
    let mut c = case();
    c.gen = Gen::Gen8;
    let mut inner = CmdBuf::new();
    inner.bb_end();
    assert!(c.with(Ppgtt, 0x5000, &inner).scan(ring().raw(&[0x1881_0101, 0x5000, 0])).is_ok());
}

#[test]
fn a_batch_that_jumps_to_itself_is_copied_once() {
    let mut lp = CmdBuf::new();
    lp.store_dword(Ggtt, TARGET, 1).bb_start(Ggtt, BATCH, false);
    let w = case().with(Ggtt, BATCH, &lp).scan(ring().bb_start(Ggtt, BATCH, false)).unwrap();
    assert_eq!(w.batches.len(), 1);
    assert_eq!(w.relocs.iter().filter(|r| r.target == 0).count(), 2);
}

#[test]
fn softpinned_canonical_ppgtt_batches() {
    // iris/anv place buffers near the top of the 48-bit space; addresses arrive in canonical form.
    let top = 0xffff_ffff_fffe_0000u64;
    let mut b = CmdBuf::new();
    b.store_dword(Ppgtt, top + 0x1000, 9).bb_end();
    let w = case().with(Ppgtt, top & ((1 << 48) - 1), &b).scan(ring().bb_start(Ppgtt, top, false)).unwrap();
    assert_eq!(w.batches.len(), 1);
    assert_eq!(w.batches[0].kind, BufferKind::Batch { level: 1, space: Ppgtt, gma: 0xffff_fffe_0000 });
    assert!(matches!(
        reason(case().scan(ring().bb_start(Ppgtt, 0x1234_0000_0000_0000, false))),
        Reason::NonCanonical(_)
    ));
}

#[test]
fn unterminated_and_over_budget_batches() {
    // Runs into unmapped memory.
    let mut b = CmdBuf::new();
    b.noop(1024);
    let r = case().with(Ggtt, BATCH, &b).scan(ring().bb_start(Ggtt, BATCH, false));
    assert!(matches!(reason(r), Reason::Unmapped { space: Ggtt, gma: 0x10_9000 }));
    // A budget smaller than the batch.
    let mut big = CmdBuf::new();
    big.noop(16 * 1024).bb_end();
    let mut c = case().with(Ggtt, BATCH, &big);
    c.limits = ScanLimits { max_bytes: 32 * 1024, max_batches: 16 };
    assert!(matches!(reason(c.scan(ring().bb_start(Ggtt, BATCH, false))), Reason::Budget { limit: 32768 }));
    c.limits = ScanLimits::default();
    assert!(c.scan(ring().bb_start(Ggtt, BATCH, false)).is_ok());
    // Batch start outside the windows.
    assert!(case().scan(ring().bb_start(Ggtt, 0x2000, false)).is_err());
}

#[test]
fn copy_then_scan_copies_are_immune_to_later_guest_writes() {
    let mut b = CmdBuf::new();
    b.store_dword(Ggtt, TARGET, 1).bb_end();
    let mut r = ring();
    r.bb_start(Ggtt, BATCH, false);
    let img =
        GmImage::builder().place_dwords(Ggtt, RING, &r.dwords).place_dwords(Ggtt, BATCH, &b.dwords).build().unwrap();
    let params = params(RingSpec { start: RING, size: 4096, head: 0, tail: 16 });
    let w = scan_ring(&img.mem, &img.xlate, &params, &mut ()).unwrap();
    // The guest now rewrites its batch to store outside its memory: the scanned copy is unchanged.
    let gpa = img.xlate.translate(Ggtt, BATCH + 4).unwrap();
    vm_memory::Bytes::write_obj(&img.mem, 0x1000u32, gpa).unwrap();
    assert_eq!(w.batches[0].dwords[..5], b.dwords[..]);
}

#[test]
fn blits_in_ggtt_mode_are_bounded() {
    let c = case().on(Engine::Bcs).ggtt_surfaces();
    assert!(c.scan(ring().xy_src_copy(TARGET, 256, TARGET + 0x10000, 256, 64, 64)).is_ok());
    // The destination's last row runs past the aperture.
    assert!(c.scan(ring().xy_src_copy(APERTURE.end() - 0x1000, 256, TARGET, 256, 64, 64)).is_err());
    // The source is outside.
    assert!(c.scan(ring().xy_src_copy(TARGET, 256, 0x4000, 256, 64, 64)).is_err());
    assert!(c.scan(ring().xy_color(TARGET, 256, 64, 64, 0)).is_ok());
    assert!(c.scan(ring().xy_color(HIDDEN.end() - 256 * 63, 256, 64, 64, 0)).is_err());
    assert!(c.scan(ring().xy_fast_copy(HIDDEN.base, 1024, TARGET, 1024, 256, 16)).is_ok());
    assert!(c.scan(ring().xy_fast_copy(HIDDEN.base, 1024, TARGET, 1024, 256, 1024)).is_err());
    // Legacy blits whose Gen8+ layout is unknown: only with PPGTT surfaces.
    let setup = [0x4040_0008u32, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(matches!(reason(c.scan(ring().raw(&setup))), Reason::UnboundedSurface));
    assert!(case().on(Engine::Bcs).scan(ring().raw(&setup)).is_ok());
    // With PPGTT surfaces nothing is bounded by the GGTT windows.
    assert!(case().on(Engine::Bcs).scan(ring().xy_src_copy(0x4000, 256, 0x8000, 256, 64, 64)).is_ok());
}

#[test]
fn state_addresses_in_ggtt_mode() {
    let mut sba = [0u32; 19];
    sba[0] = 0x6101_0011;
    sba[4] = (TARGET as u32) | 1; // surface state base, modify enable
    let c = case().ggtt_surfaces();
    assert!(c.scan(ring().raw(&sba)).is_ok());
    sba[4] = 0x3000 | 1;
    assert!(matches!(reason(c.scan(ring().raw(&sba))), Reason::AddressOutsideWindows { .. }));
    assert!(case().scan(ring().raw(&sba)).is_ok(), "PPGTT state addresses are not GGTT-audited");
}

#[test]
fn media_driver_commands_on_video_engines() {
    let t = CommandTable::for_gen(Gen::Gen9);
    for name in
        ["HCP_PIPE_MODE_SELECT", "HUC_PIPE_MODE_SELECT", "VDENC_PIPE_MODE_SELECT", "VD_PIPELINE_FLUSH", "MFX_WAIT"]
    {
        let d = t.by_name(name).unwrap_or_else(|| panic!("{name}"));
        let len = match d.length {
            Length::Fixed(n) => n as usize,
            Length::Field { bias, .. } => bias as usize,
        };
        let mut cmd = vec![0u32; len];
        cmd[0] = d.header_value;
        for e in [Engine::Vcs, Engine::Vcs2] {
            assert!(case().on(e).scan(ring().raw(&cmd)).is_ok(), "{name} on {e}");
        }
    }
}

#[test]
fn semaphore_register_poll_reads_a_register() {
    assert!(case().scan(ring().raw(&[0x0e01_8002, 0, 0x2358, 0])).is_ok());
    assert!(case().scan(ring().raw(&[0x0e01_8002, 0, 0x2080, 0])).is_err());
}

#[test]
fn status_page_at_the_top_of_the_address_space_is_rejected_not_wrapped() {
    let mut b = ring();
    b.pipe_control(1 << 21, PostSync::WriteImmediate, Ppgtt, 0x40, 5, false);
    let mut c = case();
    c.hwsp = Some(u64::MAX - 8);
    assert!(matches!(reason(c.scan(&b)), Reason::HwspIndex(0x40)));
}

/// Scans `batch` as a non-privileged batch (started in the PPGTT from the ring) and as a
/// privileged one (a GGTT batch), returning both results and the non-privileged copy.
fn both_privileges(batch: &CmdBuf) -> (Result<ScannedWorkload, ScanError>, Result<ScannedWorkload, ScanError>) {
    let mut b = batch.clone();
    b.bb_end();
    let user = case().with(Ppgtt, 0x5000, &b).scan(ring().bb_start(Ppgtt, 0x5000, false));
    let privileged = case().with(Ggtt, BATCH, &b).scan(ring().bb_start(Ggtt, BATCH, false));
    (user, privileged)
}

#[test]
fn non_privileged_batches_drop_what_the_hardware_drops() {
    use regs::RegAccess::{Read, Write};
    // Mesa's render-context setup (CS_DEBUG_MODE2) and IGT gem_ctx_isolation's accesses: what the
    // hardware lets a user batch do runs unchanged, from either kind of batch.
    let mut ok = CmdBuf::new();
    ok.lri(&[(0x20d8, 0x0010_0010)]).srm(0x22c8, Ppgtt, 0x40).lrm(0x2310, Ppgtt, 0x80).lrr(0x2600, 0x2408);
    let (user, privileged) = both_privileges(&ok);
    let user = user.unwrap();
    assert_eq!(user.batches[0].dwords[..ok.dwords.len()], ok.dwords[..], "unchanged");
    assert_eq!((user.stats.dropped, user.dropped.len()), (0, 0));
    assert!(privileged.is_ok());
    // What a user batch may not do: dropped (MI_NOOP, counted by register and direction) from a
    // non-privileged batch; from a privileged one refused, or for context state (a chicken
    // register, the context's own root) allowed.
    for (cmd, drops, privileged_ok) in [
        (CmdBuf::new().lri(&[(0x2600, 1), (0x2034, 0)]).clone(), vec![(0x2034, Write)], false),
        (CmdBuf::new().lri(&[(0xe100, 0x0001_0001)]).clone(), vec![(0xe100, Write)], true),
        (CmdBuf::new().lri(&[(0x2270, 0)]).clone(), vec![(0x2270, Write)], true),
        (CmdBuf::new().lrm(0x2080, Ppgtt, 0x40).clone(), vec![(0x2080, Write)], false),
        (CmdBuf::new().srm(0x2034, Ppgtt, 0x40).clone(), vec![(0x2034, Read)], false),
        (CmdBuf::new().lrr(0x2034, 0x2080).clone(), vec![(0x2034, Read), (0x2080, Write)], false),
    ] {
        let (user, privileged) = both_privileges(&cmd);
        let user = user.unwrap_or_else(|e| panic!("{cmd:x?}: {e}"));
        let n = cmd.dwords.len();
        assert!(user.batches[0].dwords[..n].iter().all(|&d| d == 0), "{cmd:x?} becomes MI_NOOP");
        let got: Vec<(u32, regs::RegAccess)> = user.dropped.iter().map(|d| (d.reg, d.access)).collect();
        assert_eq!(got, drops, "{cmd:x?}");
        assert_eq!(user.stats.dropped, drops.len() as u64);
        assert_eq!(privileged.is_ok(), privileged_ok, "{cmd:x?}");
    }
    // An LRI post-sync to a register the batch may not write: the command goes, as on the
    // software GPU.
    let mut pc = CmdBuf::new();
    pc.pipe_control(1 << 23, PostSync::None, Ggtt, 0x2080, 0, false);
    let (user, privileged) = both_privileges(&pc);
    let user = user.unwrap();
    assert!(user.batches[0].dwords[..pc.dwords.len()].iter().all(|&d| d == 0));
    assert_eq!(user.stats.dropped, 1);
    assert!(privileged.is_err());
    // Counts add up per register; distinct kinds are bounded.
    let mut many = CmdBuf::new();
    for k in 0..(MAX_DROPPED_KINDS as u32 + 8) {
        many.lri(&[(0x2034, 0)]).lri(&[(0x4000 + 4 * k, 0)]);
    }
    let user = both_privileges(&many).0.unwrap();
    assert_eq!(user.stats.dropped, 2 * (MAX_DROPPED_KINDS as u64 + 8));
    assert_eq!(user.dropped.len(), MAX_DROPPED_KINDS);
    assert_eq!(user.dropped[0], DroppedAccess { reg: 0x2034, access: Write, count: MAX_DROPPED_KINDS as u64 + 8 });
    // On Gen8 CS_DEBUG_MODE2 is no register: dropped from a user batch, refused from the ring.
    let mut c = case();
    c.gen = Gen::Gen8;
    let mut b = CmdBuf::new();
    b.lri(&[(0x20d8, 0x0010_0010)]).bb_end();
    let w = c.with(Ppgtt, 0x5000, &b).scan(ring().bb_start(Ppgtt, 0x5000, false)).unwrap();
    assert_eq!(w.stats.dropped, 1);
}

#[test]
fn non_privileged_batches_run_commands_as_the_hardware_runs_them() {
    // Privileged commands and global-GTT accesses the hardware refuses from a user batch: MI_NOOP
    // in the copy, counted; refused from a privileged buffer.
    let mut arb = CmdBuf::new();
    arb.raw(&[0x0400_0000]); // MI_ARB_ON_OFF (off)
    let mut sdi = CmdBuf::new();
    sdi.store_dword(Ggtt, 0x1000, 0xbad);
    let mut srm = CmdBuf::new();
    srm.srm(0x2600, Ggtt, 0x1000);
    let mut cmm = CmdBuf::new();
    cmm.copy_mem_mem(Ggtt, 0x1000, Ppgtt, 0);
    let mut gtt = CmdBuf::new();
    gtt.raw(&[0x1180_0001, 0x1000, 0]); // MI_UPDATE_GTT
    for (cmd, privileged_ok) in [(&arb, true), (&sdi, false), (&srm, false), (&cmm, false), (&gtt, false)] {
        let (user, privileged) = both_privileges(cmd);
        let user = user.unwrap_or_else(|e| panic!("{cmd:x?}: {e}"));
        assert!(user.batches[0].dwords[..cmd.dwords.len()].iter().all(|&d| d == 0), "{cmd:x?}");
        assert_eq!(user.stats.dropped_commands, 1, "{cmd:x?}");
        assert_eq!(privileged.is_ok(), privileged_ok, "{cmd:x?}");
    }
    // Other global-GTT selections are taken in the PPGTT: the copy clears them, nothing is audited
    // against the windows.
    let mut flush = CmdBuf::new();
    flush.pipe_control(0, PostSync::WriteImmediate, Ggtt, 0x1000, 1, false);
    let (user, privileged) = both_privileges(&flush);
    let user = user.unwrap();
    assert_eq!(user.batches[0].dwords[1] & (1 << 24), 0, "PIPE_CONTROL's GGTT bit cleared");
    assert_eq!(user.stats.dropped_commands, 0);
    assert!(privileged.is_err(), "outside the windows");
    let mut atomic = CmdBuf::new();
    atomic.atomic(0x07, 0, Ggtt, 0x1000);
    let user = both_privileges(&atomic).0.unwrap();
    assert_eq!(user.batches[0].dwords[0] & (1 << 22), 0);
    // A GGTT batch start from a user batch starts a PPGTT batch.
    let mut b = CmdBuf::new();
    b.bb_start(Ggtt, 0x6000, false).bb_end();
    let mut inner = CmdBuf::new();
    inner.store_dword(Ppgtt, 0x40, 1).bb_end();
    let w = case().with(Ppgtt, 0x5000, &b).with(Ppgtt, 0x6000, &inner).scan(ring().bb_start(Ppgtt, 0x5000, false));
    let w = w.unwrap();
    assert_eq!(w.batches[1].kind, BufferKind::Batch { level: 1, space: Ppgtt, gma: 0x6000 });
}
