use super::entry::{IPS_64K, PRESENT, PS, RW};
use super::testing::HostTables;
use super::*;
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestMemoryMmap};

const P: u64 = PRESENT | RW;
const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;

fn mem(size: u64) -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

fn put(mem: &GuestMemoryMmap<()>, table: u64, index: u64, value: u64) {
    mem.write_obj(value, GuestAddress(table + 8 * index)).unwrap();
}

fn cache(host: &mut HostTables) -> ShadowPpgtt {
    ShadowPpgtt::new(host, PpgttLimits::default(), Box::new(Revalidate)).unwrap()
}

/// PML4 0x1000 -> PDP 0x2000 -> PD 0x3000 -> PT 0x4000, all at index 0.
fn chain(mem: &GuestMemoryMmap<()>) {
    put(mem, 0x1000, 0, 0x2000 | P);
    put(mem, 0x2000, 0, 0x3000 | P);
    put(mem, 0x3000, 0, 0x4000 | P);
}

#[test]
fn four_kib_pages_and_scratch() {
    let m = mem(4 * MB);
    chain(&m);
    put(&m, 0x4000, 1, 0x9000 | P);
    put(&m, 0x4000, 2, 0x4000_0000 | P); // not guest memory
    let mut h = HostTables::default();
    let mut c = cache(&mut h);
    let root = PpgttRoot::L4(0x1000);
    let s = c.pin(&m, &mut h, root).unwrap();
    assert_eq!(h.walk(s, 0x1234), Some(HostTables::host_of(0x9234)));
    let scratch = c.scratch_page();
    assert_eq!(h.walk(s, 0x2010), Some(scratch + 0x10), "invalid leaf -> scratch");
    assert_eq!(h.walk(s, 0x10), Some(scratch + 0x10), "not present -> scratch");
    assert_eq!(h.walk(s, 1 << 39), Some(scratch), "empty PML4 slot -> scratch chain");
    assert_eq!(c.translator(root).translate(AddrSpace::Ppgtt, 0x1234), Some(GuestAddress(0x9234)));
    assert_eq!(c.translator(root).translate(AddrSpace::Ppgtt, 0x2000), None);
    assert_eq!(c.translator(root).translate(AddrSpace::Ggtt, 0x1234), None);
    assert_eq!(c.stats().tables, 4);
    assert_eq!(c.stats().invalid_entries, 1);
    assert_eq!(h.live_mappings(), 1);
    c.unpin(&mut h, root).unwrap();
    assert_eq!(c.unpin(&mut h, root), Err(PpgttError::NotPinned(root)));
    c.destroy(&mut h);
    assert_eq!((h.live_tables(), h.live_mappings()), (0, 0));
}

#[test]
fn sixty_four_kib_pages_are_split() {
    let m = mem(4 * MB);
    chain(&m);
    put(&m, 0x3000, 0, 0x4000 | P | IPS_64K);
    put(&m, 0x4000, 0, 0x10_0000 | P);
    put(&m, 0x4000, 16, 0x12_0000 | P);
    put(&m, 0x4000, 5, 0x9000 | P); // ignored in a 64K table
    let mut h = HostTables::default();
    let mut c = cache(&mut h);
    let s = c.pin(&m, &mut h, PpgttRoot::L4(0x1000)).unwrap();
    assert_eq!(h.walk(s, 0xf00c), Some(HostTables::host_of(0x10_f00c)));
    assert_eq!(h.walk(s, 0x1_5000), Some(HostTables::host_of(0x12_5000)));
    assert_eq!(h.walk(s, 0x5000), Some(HostTables::host_of(0x10_5000)), "entry 5 is unused");
    assert_eq!(h.walk(s, 0x2_0000), Some(c.scratch_page()));
    assert_eq!(h.live_mappings(), 32);
    // The shadow PDE is a plain 4 KiB table pointer.
    let ShadowRoot::L4(pml4) = s else { panic!() };
    let pdp = h.entry(pml4, 0).unwrap() & ADDR_MASK;
    let pd = h.entry(pdp, 0).unwrap() & ADDR_MASK;
    assert_eq!(h.entry(pd, 0).unwrap() & IPS_64K, 0);
    let t = c.translator(PpgttRoot::L4(0x1000));
    assert_eq!(t.translate(AddrSpace::Ppgtt, 0x1_0004), Some(GuestAddress(0x12_0004)));
}

#[test]
fn huge_pages_split_or_kept() {
    for contiguous in [false, true] {
        let m =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20), (GuestAddress(GB), GB as usize)]).unwrap();
        chain(&m);
        put(&m, 0x3000, 1, 0x20_0000 | P | PS); // 2 MiB page at 2 MiB
        put(&m, 0x3000, 2, 0x70_0000 | P | PS); // misaligned: the address bits below 21 are ignored
        put(&m, 0x2000, 1, GB | P | PS); // 1 GiB page
        put(&m, 0x2000, 2, (2 * GB) | P | PS); // not guest memory
        let mut h = HostTables::default();
        h.contiguous = contiguous;
        let mut c = cache(&mut h);
        let s = c.pin(&m, &mut h, PpgttRoot::L4(0x1000)).unwrap();
        assert_eq!(h.walk(s, 2 * MB + 0x1_2345), Some(HostTables::host_of(2 * MB + 0x1_2345)));
        assert_eq!(h.walk(s, 4 * MB + 0x10), Some(HostTables::host_of(6 * MB + 0x10)));
        assert_eq!(h.walk(s, GB + 0x3456_7890), Some(HostTables::host_of(GB + 0x3456_7890)));
        assert_eq!(h.walk(s, 2 * GB + 0x10), Some(c.scratch_page() + 0x10));
        let t = c.translator(PpgttRoot::L4(0x1000));
        assert_eq!(t.translate(AddrSpace::Ppgtt, GB + 0x3456_7890), Some(GuestAddress(GB + 0x3456_7890)));
        if contiguous {
            assert_eq!((c.stats().tables, h.live_mappings()), (4, 3));
        } else {
            // Two 2 MiB pages as two PTs; the 1 GiB page as a PD of 512 PTs.
            assert_eq!(c.stats().tables, 4 + 2 + 1 + 512);
            assert_eq!(h.live_mappings(), 2 * 512 + 512 * 512);
        }
        c.unpin(&mut h, PpgttRoot::L4(0x1000)).unwrap();
        c.destroy(&mut h);
        assert_eq!((h.live_tables(), h.live_mappings()), (0, 0));
    }
}

#[test]
fn legacy_three_level_root() {
    let m = mem(4 * MB);
    put(&m, 0x3000, 0, 0x4000 | P);
    put(&m, 0x4000, 3, 0xa000 | P);
    put(&m, 0x5000, 0, 0x4000 | P); // a second PD sharing the PT
    let mut h = HostTables::default();
    let mut c = cache(&mut h);
    let root = PpgttRoot::L3([0x3000, 0, 0x5000, 0]);
    let s = c.pin(&m, &mut h, root).unwrap();
    assert_eq!(h.walk(s, 0x3008), Some(HostTables::host_of(0xa008)));
    assert_eq!(h.walk(s, 2 * GB + 0x3008), Some(HostTables::host_of(0xa008)));
    assert_eq!(h.walk(s, GB + 0x3008), Some(c.scratch_page() + 8));
    assert_eq!(c.stats().tables, 3, "the PT is shadowed once");
    assert_eq!(s.pdps()[1], c.scratch[2]);
    assert_eq!(c.pin(&m, &mut h, PpgttRoot::L3([0; 4])), Err(PpgttError::EmptyRoot));
    assert_eq!(c.pin(&m, &mut h, PpgttRoot::L3([0x3000, 8 * GB, 0, 0])), Err(PpgttError::BadRoot(8 * GB)));
    assert_eq!(c.pin(&m, &mut h, PpgttRoot::L4(0)), Err(PpgttError::EmptyRoot));
}

#[test]
fn untracked_changes_are_revalidated_at_pin() {
    let m = mem(4 * MB);
    chain(&m);
    put(&m, 0x4000, 0, 0x9000 | P);
    let mut h = HostTables::default();
    let mut c = cache(&mut h);
    let root = PpgttRoot::L4(0x1000);
    c.pin(&m, &mut h, root).unwrap();
    c.unpin(&mut h, root).unwrap();
    // The guest remaps the page, and moves the PT of a second range to a new table.
    put(&m, 0x4000, 0, 0xa000 | P);
    put(&m, 0x3000, 1, 0x6000 | P);
    put(&m, 0x6000, 0, 0xb000 | P);
    let s = c.pin(&m, &mut h, root).unwrap();
    assert_eq!(h.walk(s, 0x44), Some(HostTables::host_of(0xa044)));
    assert_eq!(h.walk(s, 2 * MB + 0x44), Some(HostTables::host_of(0xb044)));
    assert_eq!(h.live_mappings(), 2, "the old mapping of 0x9000 is released");
    // The guest unmaps the whole PD entry: the PT shadow goes away.
    put(&m, 0x3000, 1, 0);
    let s = c.pin(&m, &mut h, root).unwrap();
    assert_eq!(h.walk(s, 2 * MB + 0x44), Some(c.scratch_page() + 0x44));
    assert_eq!((c.stats().tables, h.live_mappings()), (4, 1));
}

/// Records tracked pages and lets a test report dirty pages.
#[derive(Clone, Default)]
struct Tracker(Arc<Mutex<(Vec<u64>, Vec<GuestAddress>)>>);

impl PageTracker for Tracker {
    fn track(&mut self, gpa: GuestAddress) -> bool {
        self.0.lock().unwrap().0.push(gpa.0);
        true
    }
    fn untrack(&mut self, gpa: GuestAddress) {
        self.0.lock().unwrap().0.retain(|&g| g != gpa.0);
    }
    fn drain_writes(&mut self, out: &mut Vec<GuestAddress>) {
        out.append(&mut self.0.lock().unwrap().1);
    }
}

#[test]
fn tracked_pages_sync_only_when_reported() {
    let m = mem(4 * MB);
    chain(&m);
    put(&m, 0x4000, 0, 0x9000 | P);
    let mut h = HostTables::default();
    let t = Tracker::default();
    let mut c = ShadowPpgtt::new(&mut h, PpgttLimits::default(), Box::new(t.clone())).unwrap();
    let root = PpgttRoot::L4(0x1000);
    c.pin(&m, &mut h, root).unwrap();
    let mut tracked = t.0.lock().unwrap().0.clone();
    tracked.sort();
    assert_eq!(tracked, vec![0x1000, 0x2000, 0x3000, 0x4000]);
    put(&m, 0x4000, 0, 0xa000 | P);
    // Not reported: the tracker is trusted and the shadow is not re-read.
    let s = c.pin(&m, &mut h, root).unwrap();
    assert_eq!(h.walk(s, 0), Some(HostTables::host_of(0x9000)));
    assert_eq!(c.stats().revalidations, 0);
    // Reported by a write-protection fault.
    c.page_written(GuestAddress(0x4008));
    let s = c.pin(&m, &mut h, root).unwrap();
    assert_eq!(h.walk(s, 0), Some(HostTables::host_of(0xa000)));
    // Reported by the dirty log.
    put(&m, 0x3000, 0, 0);
    t.0.lock().unwrap().1.push(GuestAddress(0x3000));
    let s = c.pin(&m, &mut h, root).unwrap();
    assert_eq!(h.walk(s, 0), Some(c.scratch_page()));
    assert_eq!(t.0.lock().unwrap().0.len(), 3, "the dropped PT page is untracked");
    for _ in 0..3 {
        c.unpin(&mut h, root).unwrap();
    }
    c.clear(&mut h);
    assert!(t.0.lock().unwrap().0.is_empty());
}

#[test]
fn pvinfo_create_and_destroy() {
    let m = mem(4 * MB);
    chain(&m);
    put(&m, 0x4000, 0, 0x9000 | P);
    let mut h = HostTables::default();
    let mut c = cache(&mut h);
    let (create, root) = g2v_ppgtt_notification(4, [0x1000, 0, 0, 0]).unwrap();
    assert!(create);
    c.notify_create(&m, &mut h, root).unwrap();
    assert_eq!(c.stats().tables, 4, "built before any workload");
    let s = c.pin(&m, &mut h, root).unwrap();
    c.notify_destroy(&mut h, g2v_ppgtt_notification(5, [0x1000, 0, 0, 0]).unwrap().1);
    assert_eq!(h.walk(s, 0), Some(HostTables::host_of(0x9000)), "kept while pinned");
    c.unpin(&mut h, root).unwrap();
    assert_eq!((c.stats().tables, h.live_mappings()), (0, 0));
    c.notify_destroy(&mut h, root); // unknown: ignored
    assert_eq!(g2v_ppgtt_notification(6, [0; 4]), None);
    assert_eq!(g2v_ppgtt_notification(2, [1, 2, 3, 4]), Some((true, PpgttRoot::L3([1, 2, 3, 4]))));
}

#[test]
fn table_budget_evicts_unpinned_roots() {
    let m = mem(4 * MB);
    chain(&m);
    // A second, disjoint table set.
    put(&m, 0x11000, 0, 0x12000 | P);
    put(&m, 0x12000, 0, 0x13000 | P);
    put(&m, 0x13000, 0, 0x14000 | P);
    let mut h = HostTables::default();
    let mut c = ShadowPpgtt::new(&mut h, PpgttLimits { max_tables: 5, max_roots: 8 }, Box::new(Revalidate)).unwrap();
    let (a, b) = (PpgttRoot::L4(0x1000), PpgttRoot::L4(0x11000));
    c.pin(&m, &mut h, a).unwrap();
    assert_eq!(c.pin(&m, &mut h, b), Err(PpgttError::TooManyTables(5)));
    assert_eq!(c.stats().tables, 4, "the failed build left nothing behind");
    c.unpin(&mut h, a).unwrap();
    c.pin(&m, &mut h, b).unwrap();
    assert_eq!(c.stats().evictions, 1);
    assert_eq!(c.translator(a).translate(AddrSpace::Ppgtt, 0), None);
}

#[test]
fn host_failures_leave_no_leak() {
    let m = mem(4 * MB);
    chain(&m);
    for i in 0..512 {
        put(&m, 0x4000, i, (0x10_0000 + i * 4096) | P);
    }
    for budget in [0usize, 2, 3, 100, 300] {
        let mut h = HostTables::default();
        let mut c = cache(&mut h);
        h.alloc_budget = Some(budget);
        let r = c.pin(&m, &mut h, PpgttRoot::L4(0x1000));
        assert!(matches!(r, Err(PpgttError::Alloc(_)) | Err(PpgttError::Map { .. })), "{r:?}");
        assert_eq!((h.live_tables(), h.live_mappings(), c.stats().tables), (4, 0, 0));
    }
}

// ---- the isolation invariant ----

const TABLES: u64 = 10;
const MEM: u64 = 4 * MB;

fn entry_value() -> impl Strategy<Value = u64> {
    let table = (1..=TABLES, any::<bool>(), any::<bool>())
        .prop_map(|(t, ips, ps)| (t * 4096) | P | if ips { IPS_64K } else { 0 } | if ps { PS } else { 0 });
    prop_oneof![
        4 => table,
        3 => (0..MEM / 4096).prop_map(|p| (p * 4096) | P),
        1 => (0..4u64).prop_map(|p| (p * 2 * MB) | P | PS),
        1 => any::<u64>(),
        1 => Just(0u64),
    ]
}

/// A write of one entry: table, index (small, so walks meet them), value.
fn writes() -> impl Strategy<Value = Vec<(u64, u64, u64)>> {
    prop::collection::vec((1..=TABLES, prop_oneof![0..4u64, 0..512u64], entry_value()), 0..80)
}

fn gma() -> impl Strategy<Value = u64> {
    (0..4u64, 0..4u64, 0..4u64, prop_oneof![0..4u64, 0..512u64], 0..4096u64)
        .prop_map(|(a, b, c, d, o)| (a << 39) | (b << 30) | (c << 21) | (d << 12) | o)
}

fn apply(mem: &GuestMemoryMmap<()>, w: &[(u64, u64, u64)]) {
    for &(t, i, v) in w {
        put(mem, t * 4096, i, v);
    }
}

fn check(mem: &GuestMemoryMmap<()>, c: &ShadowPpgtt, h: &HostTables, root: PpgttRoot, s: ShadowRoot, gmas: &[u64]) {
    let scratch = c.scratch_page();
    for &g in gmas {
        let g = if matches!(root, PpgttRoot::L3(_)) { g & 0xffff_ffff } else { g };
        let got = h.walk(s, g).expect("every shadow walk ends at a page");
        match testing::guest_walk(mem, root, g) {
            Some(gpa) => assert_eq!(got, HostTables::host_of(gpa), "gma {g:#x}"),
            None => assert_eq!(got, scratch + (g & 0xfff), "gma {g:#x} should be scratch"),
        }
        assert!(
            (testing::HOST_OFFSET..testing::HOST_OFFSET + MEM).contains(&got) || got >> 12 == scratch >> 12,
            "gma {g:#x} reaches {got:#x} outside the guest"
        );
        let via_translation = c.translator(root).translate(AddrSpace::Ppgtt, g).map(|a| a.0);
        assert_eq!(via_translation, testing::guest_walk(mem, root, g));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the guest puts in its tables, and however it changes them between workloads:
    /// every shadow walk ends in the guest's own memory or its scratch page, exactly where a walk
    /// of the (validated) guest tables ends; and nothing leaks when the shadows are dropped.
    #[test]
    fn shadow_maps_only_the_owners_memory(
        first in writes(), second in writes(), gmas in prop::collection::vec(gma(), 64),
        l3 in any::<bool>(), contiguous in any::<bool>(), root_table in 1..=TABLES, tracked in any::<bool>(),
    ) {
        let m = mem(MEM);
        apply(&m, &first);
        let root = if l3 { PpgttRoot::L3([root_table * 4096, 0, (root_table % TABLES + 1) * 4096, 0]) }
                   else { PpgttRoot::L4(root_table * 4096) };
        let mut h = HostTables::default();
        h.contiguous = contiguous;
        // Either every table page is tracked and each guest write reported (a write-protecting
        // VMM), or nothing is tracked and pins re-validate.
        let tracker: Box<dyn PageTracker> = if tracked { Box::new(Tracker::default()) } else { Box::new(Revalidate) };
        let mut c = ShadowPpgtt::new(&mut h, PpgttLimits::default(), tracker).unwrap();
        let s = c.pin(&m, &mut h, root).unwrap();
        check(&m, &c, &h, root, s, &gmas);
        c.unpin(&mut h, root).unwrap();
        apply(&m, &second);
        for &(t, i, _) in &second {
            c.page_written(GuestAddress(t * 4096 + 8 * i));
        }
        let s = c.pin(&m, &mut h, root).unwrap();
        check(&m, &c, &h, root, s, &gmas);
        c.unpin(&mut h, root).unwrap();
        c.destroy(&mut h);
        prop_assert_eq!((h.live_tables(), h.live_mappings()), (0, 0));
    }
}
