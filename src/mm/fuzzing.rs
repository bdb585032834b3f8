//! Entry points shared by the `ggtt` and `ppgtt` fuzz targets and the corpus replay under
//! `cargo test`. Each interprets arbitrary bytes as guest activity, runs it, and checks the
//! isolation invariants; it returns `Err` describing a violation and never panics itself. `Ok`
//! says whether the input did something interesting (mapped a page, shadowed a table).

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ggtt::{HostGgtt, VirtualGgtt, PTE_ADDR_MASK, PTE_PRESENT};
use super::ppgtt::testing::{guest_walk, HostTables, HOST_OFFSET};
use super::ppgtt::{PpgttLimits, PpgttRoot, Revalidate, ShadowPpgtt};
use crate::cmd::{GmRange, GmWindows, PAGE_SIZE};

/// Guest memory of the fuzzed vGPU.
const MEM: u64 = 0x4_0000;
const AP: GmRange = GmRange::new(0x10_0000, 0x8000);
const HI: GmRange = GmRange::new(0x100_0000, 0x4000);
/// GTT byte offsets the inputs may write (just past the hidden window).
const GTT_SPAN: u64 = (HI.base + HI.size) / PAGE_SIZE * 8 + 64;
const SCRATCH: u64 = 0xdead_0000;

fn guest_memory() -> Result<GuestMemoryMmap<()>, String> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).map_err(|e| e.to_string())
}

#[derive(Default)]
struct HostGtt(BTreeMap<u64, u64>);

impl HostGgtt for HostGtt {
    fn write_pte(&mut self, index: u64, pte: u64) {
        self.0.insert(index, pte);
    }
}

/// GGTT writes: 13-byte records `[flags, offset u32 LE, value u64 LE]`; flags bit 0 = 8-byte
/// write, bit 1 = keep the value's high bits (else the address is folded into guest memory plus
/// a little beyond), bit 7 = reset the vGPU's GGTT first.
pub fn ggtt_bytes(data: &[u8]) -> Result<bool, String> {
    let mem = guest_memory()?;
    let windows = GmWindows { aperture: AP, hidden: HI };
    let mut g = VirtualGgtt::new(windows, SCRATCH);
    let (mut dma, mut host) = (HostTables::default(), HostGtt::default());
    g.reset(&mut dma, &mut host);
    for rec in data.chunks_exact(13) {
        let (flags, rest) = rec.split_first().ok_or("short record")?;
        let (off, val) = rest.split_at(4);
        let off = u64::from(u32::from_le_bytes(off.try_into().map_err(|_| "offset")?)) % GTT_SPAN;
        let mut value = u64::from_le_bytes(val.try_into().map_err(|_| "value")?);
        if flags & 2 == 0 {
            value = (value & 0xfff) | ((value >> 12) % (MEM / PAGE_SIZE + 4)) << 12;
        }
        if flags & 0x80 != 0 {
            g.reset(&mut dma, &mut host);
        }
        let (off, size) = if flags & 1 != 0 { (off & !7, 8) } else { (off & !3, 4) };
        g.write(&mem, &mut dma, &mut host, off, size, value).map_err(|e| format!("write failed: {e}"))?;
        let back = g.read(off, size).map_err(|e| e.to_string())?;
        let expect = if windows.contains(off / 8 * PAGE_SIZE, 1) {
            if size == 8 {
                value
            } else {
                value & 0xffff_ffff
            }
        } else {
            0
        };
        if back != expect {
            return Err(format!("read back {back:#x} at {off:#x}, wrote {value:#x}"));
        }
    }
    let mut mapped = 0;
    for (&idx, &pte) in &host.0 {
        if !windows.contains(idx * PAGE_SIZE, PAGE_SIZE) {
            return Err(format!("host entry {idx:#x} outside the vGPU's windows"));
        }
        let addr = pte & PTE_ADDR_MASK;
        if pte & PTE_PRESENT == 0 || (addr != SCRATCH && !(HOST_OFFSET..HOST_OFFSET + MEM).contains(&addr)) {
            return Err(format!("host entry {idx:#x} = {pte:#x} maps outside the guest"));
        }
        mapped += usize::from(addr != SCRATCH);
    }
    if dma.live_mappings() != mapped {
        return Err(format!("{} live mappings for {mapped} mapped entries", dma.live_mappings()));
    }
    g.reset(&mut dma, &mut host);
    if dma.live_mappings() != 0 {
        return Err("mappings left after reset".into());
    }
    Ok(mapped > 0)
}

/// PPGTT tables over arbitrary guest memory: `[flags, root page, memory image..., 0xff 0xff,
/// second image...]`. The first image (up to the 0xff 0xff marker) is the guest memory, pages of
/// which the root names as its table; the second is written over it between two pins. Flags:
/// bit 0 a 3-level root (page directories `root` and `root + 1`), bit 1 contiguous huge pages.
/// Walks of addresses built from small table indices must match a walk of the guest's own tables.
pub fn ppgtt_bytes(data: &[u8]) -> Result<bool, String> {
    let [flags, root_page, rest @ ..] = data else { return Ok(false) };
    let (first, second) = match rest.windows(2).position(|w| w == [0xff, 0xff]) {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 2..).unwrap_or_default()),
        None => (rest, &[][..]),
    };
    let mem = guest_memory()?;
    // Images are spread over the low pages: byte k goes to page k/64, entry (k%64)/8 — so a short
    // input fills the first entries of many tables.
    let place = |img: &[u8]| -> Result<(), String> {
        for (k, chunk) in img.chunks(8).enumerate() {
            let mut v = [0u8; 8];
            for (d, s) in v.iter_mut().zip(chunk) {
                *d = *s;
            }
            let (page, entry) = ((k / 8) as u64 % (MEM / PAGE_SIZE), (k % 8) as u64);
            mem.write_obj(u64::from_le_bytes(v), GuestAddress(page * PAGE_SIZE + entry * 8))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    place(first)?;
    let page = |p: u8| u64::from(p) % (MEM / PAGE_SIZE) * PAGE_SIZE;
    let root = if flags & 1 != 0 {
        PpgttRoot::L3([page(*root_page), 0, page(root_page.wrapping_add(1)), 0])
    } else {
        PpgttRoot::L4(page(*root_page))
    };
    let mut host = HostTables::default();
    host.contiguous = flags & 2 != 0;
    let mut c = ShadowPpgtt::new(&mut host, PpgttLimits { max_tables: 256, max_roots: 4 }, Box::new(Revalidate))
        .map_err(|e| e.to_string())?;
    let mut shadowed = false;
    for round in 0..2 {
        if round == 1 {
            place(second)?;
        }
        match c.pin(&mem, &mut host, root) {
            Ok(s) => {
                shadowed = true;
                for gma in probe_addresses(matches!(root, PpgttRoot::L3(_))) {
                    let got = host.walk(s, gma).ok_or_else(|| format!("shadow walk of {gma:#x} fell off"))?;
                    let want = match guest_walk(&mem, root, gma) {
                        Some(gpa) => HostTables::host_of(gpa),
                        None => c.scratch_page() + (gma & 0xfff),
                    };
                    if got != want {
                        return Err(format!("gma {gma:#x}: shadow reaches {got:#x}, guest tables say {want:#x}"));
                    }
                }
                c.unpin(&mut host, root).map_err(|e| e.to_string())?;
            }
            Err(_) => c.clear(&mut host), // a root outside memory or over budget: nothing to check
        }
    }
    c.destroy(&mut host);
    if host.live_tables() != 0 || host.live_mappings() != 0 {
        return Err(format!("leak: {} tables, {} mappings", host.live_tables(), host.live_mappings()));
    }
    Ok(shadowed)
}

/// Addresses whose walk uses table entries 0..3 at every level, at a few offsets.
fn probe_addresses(l3: bool) -> impl Iterator<Item = u64> {
    (0..256u64).map(move |k| {
        let (a, b, c, d) = (k & 3, (k >> 2) & 3, (k >> 4) & 3, (k >> 6) & 3);
        let gma = (a << 39) | (b << 30) | (c << 21) | (d << 12) | ((k * 0x123) & 0xfff);
        if l3 {
            gma & 0xffff_ffff
        } else {
            gma
        }
    })
}

/// Seed inputs for the two targets.
pub fn seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let rec = |flags: u8, off: u64, value: u64| {
        let mut r = vec![flags];
        r.extend_from_slice(&(off as u32).to_le_bytes());
        r.extend_from_slice(&value.to_le_bytes());
        r
    };
    let ap = AP.base / PAGE_SIZE * 8;
    let hi = HI.base / PAGE_SIZE * 8;
    let ggtt = vec![
        [rec(1, ap, 0x5001), rec(1, ap + 8, 0x6001)].concat(),
        [rec(0, hi, 0x7001), rec(0, hi + 4, 0), rec(0, hi + 12, 0), rec(0, hi + 8, 0x3_0001)].concat(),
        [rec(3, ap, 0x4000_0000_0001), rec(1, ap - 8, 0x1001), rec(0x81, ap, 0x2001)].concat(),
    ];
    // Page k of the image holds entries at byte 64k: PML4 (page 1) -> PDP (2) -> PD (3) -> PT (4).
    let entry = |v: u64| v.to_le_bytes().to_vec();
    let table_chain = |leaf: u64| {
        let mut img = vec![0u8; 64 * 5];
        for (p, v) in [(1u64, 0x2003u64), (2, 0x3003), (3, 0x4003), (4, leaf)] {
            let at = (p * 64) as usize;
            img.splice(at..at + 8, entry(v));
        }
        img
    };
    let ppgtt = vec![
        [vec![0, 1], table_chain(0x9003)].concat(),
        [vec![2, 1], table_chain(0x9003), vec![0xff, 0xff], table_chain(0xa003)].concat(),
        [vec![0, 1], table_chain(0x9003), vec![0xff, 0xff], {
            let mut m = table_chain(0x9003);
            m.splice(192..200, entry(0x20_0083)); // PD entry: a 2 MiB page
            m
        }]
        .concat(),
        [vec![1, 3], table_chain(0x7_0003)].concat(),
    ];
    (ggtt, ppgtt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold() {
        let (ggtt, ppgtt) = seeds();
        for s in &ggtt {
            assert_eq!(ggtt_bytes(s), Ok(true));
        }
        for s in &ppgtt {
            assert_eq!(ppgtt_bytes(s), Ok(true));
        }
        assert_eq!(ppgtt_bytes(&[]), Ok(false));
    }
}
