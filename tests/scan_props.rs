//! Property tests of the scanner: generated streams are accepted exactly when every address and
//! register in them is allowed, accepted streams decode back to what was built, and arbitrary
//! bytes never panic nor exceed the scan budget.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use proptest::prelude::*;
use shadowgpu::cmd::emit::{CmdBuf, PostSync};
use shadowgpu::cmd::image::GmImage;
use shadowgpu::cmd::{
    scan_ring, AddrSpace, BufferKind, CmdDesc, CommandTable, GmRange, GmWindows, Handler, Length, RingSpec, ScanLimits,
    ScanObserver, ScanParams, Verdict,
};
use shadowgpu::hw::{Engine, Gen};

const APERTURE: GmRange = GmRange::new(0x20_0000, 0x40_0000);
const HIDDEN: GmRange = GmRange::new(0x1000_0000, 0x100_0000);
const RING: u64 = 0x20_0000;
const RING_SIZE: u32 = 0x4_0000;

fn windows() -> GmWindows {
    GmWindows { aperture: APERTURE, hidden: HIDDEN }
}

/// A GGTT address: well inside a window, well outside, or at the last dword of a window (where
/// only a 4-byte access fits).
fn ggtt_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        24 => (APERTURE.base..APERTURE.end() - 256).prop_map(|a| a & !15),
        24 => (HIDDEN.base..HIDDEN.end() - 256).prop_map(|a| a & !15),
        1 => (0..APERTURE.base - 256).prop_map(|a| a & !15),
        1 => (APERTURE.end()..HIDDEN.base - 256).prop_map(|a| a & !15),
        1 => (HIDDEN.end()..1u64 << 40).prop_map(|a| a & !15),
        1 => Just(APERTURE.end() - 4),
        1 => Just(HIDDEN.end() - 4),
        1 => Just(APERTURE.base - 4),
    ]
}

/// Whether `size` bytes at `a` are inside one window: the property the scanner must enforce.
fn inside(a: u64, size: u64) -> bool {
    [APERTURE, HIDDEN].iter().any(|w| a >= w.base && a + size <= w.end())
}

fn reg() -> impl Strategy<Value = (u32, bool, bool)> {
    // (register, readable, writable) on RCS
    prop_oneof![
        8 => Just((0x2600, true, true)),
        8 => Just((0x2438, true, true)),
        8 => Just((0x7004, true, true)),
        8 => Just((0x5280, true, true)),
        2 => Just((0x2358, true, false)),
        2 => Just((0x2350, true, false)),
        1 => Just((0x2034, false, false)),
        1 => Just((0x2080, false, false)),
        1 => Just((0x941c, false, false)),
        1 => Just((0x4_4000, false, false)),
    ]
}

/// Generic render commands from the table that need no special handling.
fn generic_render() -> Vec<&'static CmdDesc> {
    CommandTable::for_gen(Gen::Gen9)
        .descriptors()
        .iter()
        .filter(|d| d.handler == Handler::Generic && d.engines.has(Engine::Rcs) && d.header_value >> 29 == 3)
        .collect()
}

#[derive(Clone, Debug)]
struct Frag {
    dwords: Vec<u32>,
    name: &'static str,
    valid: bool,
}

fn frag(b: &mut CmdBuf, name: &'static str, valid: bool) -> Frag {
    Frag { dwords: std::mem::take(&mut b.dwords), name, valid }
}

fn arb_frag() -> impl Strategy<Value = Frag> {
    let generics = generic_render();
    let n = generics.len();
    prop_oneof![
        (ggtt_addr(), any::<u32>()).prop_map(|(a, v)| frag(
            CmdBuf::new().store_dword(AddrSpace::Ggtt, a, v),
            "MI_STORE_DATA_IMM",
            inside(a, 4)
        )),
        (ggtt_addr(), any::<u64>()).prop_map(|(a, v)| frag(
            CmdBuf::new().store_qword(AddrSpace::Ggtt, a, v),
            "MI_STORE_DATA_IMM",
            inside(a, 8)
        )),
        (any::<u64>(), any::<u32>()).prop_map(|(a, v)| frag(
            CmdBuf::new().store_dword(AddrSpace::Ppgtt, a & 0xffff_ffff_fffc, v),
            "MI_STORE_DATA_IMM",
            true
        )),
        (reg(), ggtt_addr()).prop_map(|((r, rd, _), a)| frag(
            CmdBuf::new().srm(r, AddrSpace::Ggtt, a),
            "MI_STORE_REGISTER_MEM",
            rd && inside(a, 4)
        )),
        (reg(), ggtt_addr()).prop_map(|((r, _, wr), a)| frag(
            CmdBuf::new().lrm(r, AddrSpace::Ggtt, a),
            "MI_LOAD_REGISTER_MEM",
            wr && inside(a, 4)
        )),
        (reg(), reg()).prop_map(|((s, rd, _), (d, _, wr))| frag(
            CmdBuf::new().lrr(s, d),
            "MI_LOAD_REGISTER_REG",
            rd && wr
        )),
        prop::collection::vec((reg(), any::<u32>()), 1..6).prop_map(|pairs| {
            let ok = pairs.iter().all(|((_, _, wr), _)| *wr);
            let p: Vec<(u32, u32)> = pairs.iter().map(|((r, _, _), v)| (*r, *v)).collect();
            frag(CmdBuf::new().lri(&p), "MI_LOAD_REGISTER_IMM", ok)
        }),
        (ggtt_addr(), 0..4u8, any::<bool>()).prop_map(|(a, post, ggtt)| {
            let post = [PostSync::None, PostSync::WriteImmediate, PostSync::WriteDepthCount, PostSync::WriteTimestamp]
                [post as usize];
            let space = if ggtt { AddrSpace::Ggtt } else { AddrSpace::Ppgtt };
            let valid = inside(a, 8) || post == PostSync::None || !ggtt;
            frag(CmdBuf::new().pipe_control(0, post, space, a, 1, false), "PIPE_CONTROL", valid)
        }),
        (ggtt_addr(), 0..3u32).prop_map(|(a, size)| frag(
            CmdBuf::new().atomic(7, size, AddrSpace::Ggtt, a),
            "MI_ATOMIC",
            inside(a, 4 << size)
        )),
        (ggtt_addr(), ggtt_addr()).prop_map(|(d, s)| frag(
            CmdBuf::new().copy_mem_mem(AddrSpace::Ggtt, d, AddrSpace::Ggtt, s),
            "MI_COPY_MEM_MEM",
            inside(d, 4) && inside(s, 4)
        )),
        (ggtt_addr(), any::<u32>()).prop_map(|(a, v)| frag(
            CmdBuf::new().semaphore_wait(AddrSpace::Ggtt, a, v),
            "MI_SEMAPHORE_WAIT",
            inside(a, 4)
        )),
        (0..n, prop::collection::vec(any::<u32>(), 0..24)).prop_map(move |(i, payload)| {
            let d = generics[i];
            let mut dws = vec![d.header_value];
            match d.length {
                Length::Fixed(len) => dws.resize(usize::from(len), 0x5a5a_5a5a),
                Length::Field { mask, bias } => {
                    let extra = (payload.len() as u32).min(mask);
                    dws[0] |= extra;
                    dws.extend(payload.iter().take((extra + bias - 1) as usize));
                    dws.resize((extra + bias) as usize, 0);
                }
            }
            Frag { dwords: dws, name: d.name, valid: true }
        }),
    ]
}

#[derive(Default)]
struct Listing(Vec<(BufferKind, u64, &'static str, Verdict)>);

impl ScanObserver for Listing {
    fn command(&mut self, buffer: BufferKind, offset: u64, desc: &'static CmdDesc, _cmd: &[u32], verdict: Verdict) {
        self.0.push((buffer, offset, desc.name, verdict));
    }
}

fn params(tail: u32) -> ScanParams {
    ScanParams {
        gen: Gen::Gen9,
        engine: Engine::Rcs,
        windows: windows(),
        ring: RingSpec { start: RING, size: RING_SIZE, head: 0, tail },
        surfaces: AddrSpace::Ppgtt,
        hwsp: None,
        limits: ScanLimits::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A stream is accepted exactly when every fragment is valid; an accepted stream decodes back
    /// to the commands it was built from, at the offsets they were placed, unchanged.
    #[test]
    fn accepted_iff_valid_and_decodes_back(frags in prop::collection::vec(arb_frag(), 1..16)) {
        let mut ring = CmdBuf::new();
        let mut expect = Vec::new();
        for f in &frags {
            expect.push((ring.len_bytes(), f.name));
            ring.raw(&f.dwords);
        }
        ring.align_qword();
        let img = GmImage::builder().place_dwords(AddrSpace::Ggtt, RING, &ring.dwords).build().unwrap();
        let mut seen = Listing::default();
        let r = scan_ring(&img.mem, &img.xlate, &params(ring.len_bytes() as u32), &mut seen);
        // The fast path (no observer) and the general path (every command observed) agree.
        prop_assert_eq!(&scan_ring(&img.mem, &img.xlate, &params(ring.len_bytes() as u32), &mut ()), &r);
        let valid = frags.iter().all(|f| f.valid);
        prop_assert_eq!(r.is_ok(), valid, "{:?}", r.as_ref().err());
        if let Ok(w) = r {
            let got: Vec<(u64, &str)> = seen.0.iter().map(|(_, o, n, _)| (*o, *n)).collect();
            prop_assert_eq!(got, expect);
            prop_assert_eq!(&w.ring.dwords, &ring.dwords);
        }
    }

    /// Arbitrary bytes in the ring and in a pool that batch starts may reach: the scan never
    /// panics, never copies more than its budget, and everything it accepts stays in the windows.
    #[test]
    fn arbitrary_bytes_are_contained(ring in prop::collection::vec(any::<u32>(), 2..256),
                                     pool in prop::collection::vec(any::<u32>(), 0..2048),
                                     budget in 1u64..1 << 20) {
        let mut ring = ring;
        ring.truncate(ring.len() & !1);
        let img = GmImage::builder()
            .place_dwords(AddrSpace::Ggtt, RING, &ring)
            .place_dwords(AddrSpace::Ggtt, RING + 0x1_0000, &pool)
            .place_dwords(AddrSpace::Ppgtt, 0x1_0000, &pool)
            .build()
            .unwrap();
        let mut p = params(ring.len() as u32 * 4);
        p.limits = ScanLimits { max_bytes: budget, max_batches: 64 };
        let fast = scan_ring(&img.mem, &img.xlate, &p, &mut ());
        prop_assert_eq!(&fast, &scan_ring(&img.mem, &img.xlate, &p, &mut Listing::default()));
        if let Ok(w) = fast {
            prop_assert!(w.stats.bytes_copied <= budget);
            prop_assert!(w.batches.len() <= 64);
            for b in &w.batches {
                if let BufferKind::Batch { space: AddrSpace::Ggtt, gma, .. } = b.kind {
                    prop_assert!(windows().contains(gma, 4));
                }
            }
        }
    }
}
