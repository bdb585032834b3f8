//! The virtual GGTT: a vGPU's view of the global GTT and its mirror in the host GGTT.
//!
//! Guests write GGTT entries through the GTT part of BAR0 (8-byte writes, or two 4-byte halves in
//! either order). An entry inside the vGPU's windows is kept as the guest wrote it (reads return
//! it) and mirrored into the host GGTT with the guest page replaced by the host address the
//! [`DmaMapper`] gives for it. An entry that is not present, or names a page that is not the
//! guest's memory, points the host at a scratch page. Writes outside the windows are dropped and
//! read back as 0: with ballooning the guest never owns those entries.

use std::collections::HashMap;

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::cmd::{AddrSpace, GmTranslate, GmWindows, PAGE_SIZE};

/// Present bit of a Gen8/Gen9 GGTT entry.
pub const PTE_PRESENT: u64 = 1;
/// Page-address bits of a Gen8/Gen9 GGTT entry (bits 45:12).
pub const PTE_ADDR_MASK: u64 = 0x0000_3fff_ffff_f000;

/// Errors of the virtual GGTT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GgttError {
    /// An access that is not 4 or 8 bytes, or not naturally aligned.
    #[error("GTT access of {size} bytes at offset {offset:#x}: only aligned 4- and 8-byte accesses")]
    BadAccess {
        /// Byte offset in the GTT region.
        offset: u64,
        /// Access size.
        size: usize,
    },
    /// The DMA mapping of a guest page failed.
    #[error("mapping guest page {gpa:#x} for the GPU failed: {why}")]
    Map {
        /// Guest physical address.
        gpa: u64,
        /// The mapper's reason.
        why: String,
    },
}

/// Gives the GPU an address for a guest page: an IOVA for a real iGPU behind VFIO, a host address
/// the software GPU resolves. Implemented by the host backend.
pub trait DmaMapper {
    /// Maps the 4 KiB guest page at `gpa`; returns the address the GPU uses for it.
    fn map_page(&mut self, gpa: GuestAddress) -> Result<u64, String>;
    /// Undoes one `map_page` that returned `host`.
    fn unmap_page(&mut self, host: u64);
    /// Maps `len` bytes of contiguous guest memory at `gpa` (a 2 MiB or 1 GiB page) as one
    /// contiguous range for the GPU, if the backend can; `Ok(None)` makes the caller map it page
    /// by page instead.
    fn map_range(&mut self, gpa: GuestAddress, len: u64) -> Result<Option<u64>, String> {
        let _ = (gpa, len);
        Ok(None)
    }
    /// Undoes one `map_range` that returned `Some(host)`.
    fn unmap_range(&mut self, host: u64, len: u64) {
        let _ = (host, len);
    }
}

/// The host GGTT, as the host backend exposes it.
pub trait HostGgtt {
    /// Writes host GGTT entry `index` (graphics address `index * 4096`).
    fn write_pte(&mut self, index: u64, pte: u64);
    /// Flushes the GGTT TLBs after a batch of writes.
    fn flush(&mut self) {}
}

/// One vGPU's GGTT entries.
#[derive(Debug)]
pub struct VirtualGgtt {
    windows: GmWindows,
    /// The guest's entries for the aperture window, then the hidden window.
    guest: Vec<u64>,
    /// The host address each entry maps (for unmapping), `None` where it points at scratch.
    mapped: Vec<Option<u64>>,
    /// Entries with one 4-byte half written: bit 0 low half, bit 1 high half.
    partial: HashMap<u64, u8>,
    scratch: u64,
}

impl VirtualGgtt {
    /// The virtual GGTT of a vGPU owning `windows`; host entries start at the scratch page
    /// `scratch` (a host address) until the guest writes them. Call [`VirtualGgtt::reset`] to program them.
    pub fn new(windows: GmWindows, scratch: u64) -> Self {
        let n = (windows.aperture.size + windows.hidden.size) / PAGE_SIZE;
        VirtualGgtt {
            windows,
            guest: vec![0; n as usize],
            mapped: vec![None; n as usize],
            partial: HashMap::new(),
            scratch,
        }
    }

    /// The windows this GGTT covers.
    pub fn windows(&self) -> GmWindows {
        self.windows
    }

    /// Slot of GGTT entry `index` in this vGPU's arrays, if inside its windows.
    fn slot(&self, index: u64) -> Option<usize> {
        let gma = index.checked_mul(PAGE_SIZE)?;
        let (ap, hi) = (self.windows.aperture, self.windows.hidden);
        let s = if ap.contains(gma, 1) {
            (gma - ap.base) / PAGE_SIZE
        } else if hi.contains(gma, 1) {
            ap.size / PAGE_SIZE + (gma - hi.base) / PAGE_SIZE
        } else {
            return None;
        };
        usize::try_from(s).ok()
    }

    fn scratch_pte(&self) -> u64 {
        (self.scratch & PTE_ADDR_MASK) | PTE_PRESENT
    }

    /// Reads `size` (4 or 8) bytes at byte `offset` of the GTT region: the guest's own view.
    pub fn read(&self, offset: u64, size: usize) -> Result<u64, GgttError> {
        check_access(offset, size)?;
        let entry = self.slot(offset / 8).and_then(|s| self.guest.get(s)).copied().unwrap_or(0);
        Ok(match (size, offset % 8) {
            (8, _) => entry,
            (_, 0) => entry & 0xffff_ffff,
            _ => entry >> 32,
        })
    }

    /// Writes `size` (4 or 8) bytes at byte `offset` of the GTT region.
    pub fn write<M, D, H>(
        &mut self,
        mem: &M,
        dma: &mut D,
        host: &mut H,
        offset: u64,
        size: usize,
        value: u64,
    ) -> Result<(), GgttError>
    where
        M: GuestMemory + ?Sized,
        D: DmaMapper + ?Sized,
        H: HostGgtt + ?Sized,
    {
        check_access(offset, size)?;
        let index = offset / 8;
        let Some(slot) = self.slot(index) else { return Ok(()) };
        let Some(entry) = self.guest.get_mut(slot) else { return Ok(()) };
        if size == 8 {
            *entry = value;
            self.partial.remove(&index);
        } else {
            let (keep, half, shift) = if offset % 8 == 0 { (!0xffff_ffffu64, 1u8, 0) } else { (0xffff_ffff, 2, 32) };
            *entry = (*entry & keep) | ((value & 0xffff_ffff) << shift);
            let seen = self.partial.entry(index).or_insert(0);
            *seen |= half;
            if *seen != 3 {
                return Ok(()); // the host entry changes when the other half arrives
            }
            self.partial.remove(&index);
        }
        self.commit(mem, dma, host, index, slot)?;
        host.flush();
        Ok(())
    }

    /// Mirrors guest entry `slot` (GGTT entry `index`) into the host GGTT.
    fn commit<M, D, H>(&mut self, mem: &M, dma: &mut D, host: &mut H, index: u64, slot: usize) -> Result<(), GgttError>
    where
        M: GuestMemory + ?Sized,
        D: DmaMapper + ?Sized,
        H: HostGgtt + ?Sized,
    {
        let pte = self.guest.get(slot).copied().unwrap_or(0);
        let gpa = pte & PTE_ADDR_MASK;
        let valid =
            pte & PTE_PRESENT != 0 && mem.check_range(GuestAddress(gpa), PAGE_SIZE as usize, Permissions::ReadWrite);
        let new = if valid {
            let h = dma.map_page(GuestAddress(gpa)).map_err(|why| GgttError::Map { gpa, why })?;
            Some(h)
        } else {
            None
        };
        let host_pte = match new {
            Some(h) => (h & PTE_ADDR_MASK) | (pte & !PTE_ADDR_MASK & 0xfff) | PTE_PRESENT,
            None => self.scratch_pte(),
        };
        host.write_pte(index, host_pte);
        if let Some(old) = self.mapped.get_mut(slot).and_then(|m| std::mem::replace(m, new)) {
            dma.unmap_page(old);
        }
        Ok(())
    }

    /// Points every host entry of the windows at the scratch page and forgets the guest's entries
    /// (vGPU creation and device-model reset).
    pub fn reset<D: DmaMapper + ?Sized, H: HostGgtt + ?Sized>(&mut self, dma: &mut D, host: &mut H) {
        let scratch = self.scratch_pte();
        for r in [self.windows.aperture, self.windows.hidden] {
            for i in 0..r.size / PAGE_SIZE {
                host.write_pte(r.base / PAGE_SIZE + i, scratch);
            }
        }
        for m in self.mapped.iter_mut() {
            if let Some(h) = m.take() {
                dma.unmap_page(h);
            }
        }
        self.guest.fill(0);
        self.partial.clear();
        host.flush();
    }
}

fn check_access(offset: u64, size: usize) -> Result<(), GgttError> {
    if (size == 4 || size == 8) && offset % size as u64 == 0 {
        Ok(())
    } else {
        Err(GgttError::BadAccess { offset, size })
    }
}

/// GGTT addresses of the vGPU translate through the guest's own entries (what its commands name).
impl GmTranslate for VirtualGgtt {
    fn translate(&self, space: AddrSpace, gma: u64) -> Option<GuestAddress> {
        if space != AddrSpace::Ggtt {
            return None;
        }
        let pte = *self.guest.get(self.slot(gma / PAGE_SIZE)?)?;
        (pte & PTE_PRESENT != 0).then_some(GuestAddress((pte & PTE_ADDR_MASK) | (gma % PAGE_SIZE)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::GmRange;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use vm_memory::GuestMemoryMmap;

    const HOST_TAG: u64 = 0x10_0000_0000;
    const SCRATCH: u64 = 0xdead_0000;
    const AP: GmRange = GmRange::new(0x10_0000, 0x4000);
    const HI: GmRange = GmRange::new(0x100_0000, 0x2000);
    const GTT_AP: u64 = AP.base / PAGE_SIZE * 8;
    const GTT_HI: u64 = HI.base / PAGE_SIZE * 8;

    /// Maps a guest page to `gpa + HOST_TAG` and counts live mappings.
    #[derive(Default)]
    struct Mapper(BTreeMap<u64, u32>);

    impl DmaMapper for Mapper {
        fn map_page(&mut self, gpa: GuestAddress) -> Result<u64, String> {
            let h = gpa.0 + HOST_TAG;
            *self.0.entry(h).or_insert(0) += 1;
            Ok(h)
        }
        fn unmap_page(&mut self, host: u64) {
            let n = self.0.get_mut(&host).expect("unmap of an unmapped page");
            *n -= 1;
            if *n == 0 {
                self.0.remove(&host);
            }
        }
    }

    #[derive(Default)]
    struct Host(BTreeMap<u64, u64>);

    impl HostGgtt for Host {
        fn write_pte(&mut self, index: u64, pte: u64) {
            self.0.insert(index, pte);
        }
    }

    fn setup() -> (GuestMemoryMmap<()>, VirtualGgtt, Mapper, Host) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut g = VirtualGgtt::new(GmWindows { aperture: AP, hidden: HI }, SCRATCH);
        let (mut m, mut h) = (Mapper::default(), Host::default());
        g.reset(&mut m, &mut h);
        (mem, g, m, h)
    }

    #[test]
    fn full_writes_map_guest_pages() {
        let (mem, mut g, mut m, mut h) = setup();
        assert_eq!(h.0.len(), 6);
        assert!(h.0.values().all(|&p| p == SCRATCH | 1));
        g.write(&mem, &mut m, &mut h, GTT_AP + 8, 8, 0x5000 | 1).unwrap();
        assert_eq!(h.0[&(AP.base / PAGE_SIZE + 1)], (0x5000 + HOST_TAG) | 1);
        assert_eq!(g.read(GTT_AP + 8, 8).unwrap(), 0x5001);
        assert_eq!(g.read(GTT_AP + 12, 4).unwrap(), 0);
        assert_eq!(g.translate(AddrSpace::Ggtt, AP.base + 0x1004), Some(GuestAddress(0x5004)));
        assert_eq!(g.translate(AddrSpace::Ggtt, AP.base), None, "not present");
        // Remapping releases the old mapping.
        g.write(&mem, &mut m, &mut h, GTT_AP + 8, 8, 0x6000 | 1).unwrap();
        assert_eq!(m.0.len(), 1);
        assert!(m.0.contains_key(&(0x6000 + HOST_TAG)));
    }

    #[test]
    fn halves_in_either_order() {
        let (mem, mut g, mut m, mut h) = setup();
        let idx = HI.base / PAGE_SIZE;
        g.write(&mem, &mut m, &mut h, GTT_HI + 4, 4, 0).unwrap();
        assert_eq!(h.0[&idx], SCRATCH | 1, "one half changes nothing on the host");
        g.write(&mem, &mut m, &mut h, GTT_HI, 4, 0x7000 | 1).unwrap();
        assert_eq!(h.0[&idx], (0x7000 + HOST_TAG) | 1);
        g.write(&mem, &mut m, &mut h, GTT_HI + 8, 4, 0x8000 | 1).unwrap();
        g.write(&mem, &mut m, &mut h, GTT_HI + 12, 4, 0).unwrap();
        assert_eq!(h.0[&(idx + 1)], (0x8000 + HOST_TAG) | 1);
        assert_eq!(g.read(GTT_HI + 8, 4).unwrap(), 0x8001);
    }

    #[test]
    fn outside_windows_and_bad_pages() {
        let (mem, mut g, mut m, mut h) = setup();
        // Outside the windows: dropped, reads 0, nothing programmed.
        g.write(&mem, &mut m, &mut h, 0, 8, 0x5001).unwrap();
        g.write(&mem, &mut m, &mut h, GTT_AP - 8, 8, 0x5001).unwrap();
        assert_eq!(g.read(0, 8).unwrap(), 0);
        assert_eq!(h.0.len(), 6);
        // A page outside guest memory, or not present: scratch, and the guest still reads its value.
        g.write(&mem, &mut m, &mut h, GTT_AP, 8, 0x4000_0000 | 1).unwrap();
        assert_eq!(h.0[&(AP.base / PAGE_SIZE)], SCRATCH | 1);
        assert_eq!(g.read(GTT_AP, 8).unwrap(), 0x4000_0001);
        g.write(&mem, &mut m, &mut h, GTT_AP, 8, 0x5000).unwrap();
        assert_eq!(h.0[&(AP.base / PAGE_SIZE)], SCRATCH | 1);
        assert!(m.0.is_empty());
        assert!(g.read(GTT_AP, 2).is_err());
        assert!(g.write(&mem, &mut m, &mut h, GTT_AP + 4, 8, 0).is_err());
    }

    #[test]
    fn reset_unmaps_everything() {
        let (mem, mut g, mut m, mut h) = setup();
        for i in 0..6 {
            let off = if i < 4 { GTT_AP + 8 * i } else { GTT_HI + 8 * (i - 4) };
            g.write(&mem, &mut m, &mut h, off, 8, (0x1000 * (i + 1)) | 1).unwrap();
        }
        assert_eq!(m.0.len(), 6);
        g.reset(&mut m, &mut h);
        assert!(m.0.is_empty());
        assert!(h.0.values().all(|&p| p == SCRATCH | 1));
        assert_eq!(g.read(GTT_AP, 8).unwrap(), 0);
    }

    proptest! {
        /// Whatever a guest writes: the host GGTT is only programmed inside the vGPU's windows,
        /// every host entry is the scratch page or a mapping of a page inside guest memory, and the
        /// mapper holds exactly one mapping per mapped entry (no leak).
        #[test]
        fn host_entries_only_map_the_guests_memory(writes in prop::collection::vec(
            (0u64..(0x110_0000 / PAGE_SIZE * 8), any::<bool>(), any::<u64>()), 1..300)) {
            let (mem, mut g, mut m, mut h) = setup();
            let windows = GmWindows { aperture: AP, hidden: HI };
            for (off, wide, value) in writes {
                let (off, size) = if wide { (off & !7, 8) } else { (off & !3, 4) };
                let value = if value & 2 == 0 { value % 0x20_0000 } else { value };
                g.write(&mem, &mut m, &mut h, off, size, value).unwrap();
            }
            let mut mapped = 0;
            for (&idx, &pte) in &h.0 {
                prop_assert!(windows.contains(idx * PAGE_SIZE, PAGE_SIZE));
                prop_assert_eq!(pte & PTE_PRESENT, 1);
                let addr = pte & PTE_ADDR_MASK;
                if addr != SCRATCH {
                    prop_assert!(addr >= HOST_TAG && addr - HOST_TAG + PAGE_SIZE <= 0x10_0000, "{:#x}", addr);
                    mapped += 1;
                }
            }
            prop_assert_eq!(m.0.values().map(|&n| n as usize).sum::<usize>(), mapped);
        }
    }
}
