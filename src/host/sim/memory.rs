//! The software GPU's memory: a host physical address space made of the attached guests' memory
//! (each guest behind its own DMA window, as an IOMMU would place it) and host-owned pages (shadow
//! page tables, shadow rings and batches, scratch pages), the host GGTT, and the walks through the
//! GGTT and a shadow PPGTT that every engine access takes.
//!
//! Host addresses: guest slot `s` (1..=[`MAX_GUESTS`]) maps guest physical `gpa` at
//! `s << 40 | gpa`; host pages start at `56 << 40`. Every address fits the 46-bit PTE field.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use zerocopy::IntoBytes;

use crate::cmd::{page_chunks, AddrSpace, PAGE_SIZE};
use crate::mm::ggtt::{PTE_ADDR_MASK, PTE_PRESENT};
use crate::mm::ppgtt::entry::walk_tables;
use crate::mm::ShadowRoot;

/// Bits of guest physical address a guest slot covers (1 TiB per guest).
const SLOT_SHIFT: u32 = 40;
/// Most guests attached at once.
pub const MAX_GUESTS: usize = 55;
/// First host-owned page.
const HOST_BASE: u64 = 56 << SLOT_SHIFT;
/// Host pages the arena may hold (4 GiB).
const MAX_HOST_PAGES: usize = 1 << 20;

/// A guest's memory as the GPU reaches it by DMA. Implemented for every
/// `GuestMemory` that can be shared between threads.
pub trait GuestDma: Send + Sync {
    /// Reads `buf.len()` bytes at guest physical `gpa`; false if any byte is not guest memory.
    fn dma_read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at guest physical `gpa`; false if any byte is not guest memory.
    fn dma_write(&self, gpa: u64, data: &[u8]) -> bool;
    /// Whether `[gpa, gpa + len)` is guest memory.
    fn dma_contains(&self, gpa: u64, len: u64) -> bool;
    /// The guest's memory regions as mapped in this process: `(gpa, host address, length)`, for
    /// backends that map them into an IOMMU.
    fn host_regions(&self) -> Vec<(u64, u64, u64)> {
        Vec::new()
    }
}

impl<M: GuestMemory + Send + Sync> GuestDma for M {
    fn dma_read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read_slice(buf, GuestAddress(gpa)).is_ok()
    }

    fn dma_write(&self, gpa: u64, data: &[u8]) -> bool {
        self.write_slice(data, GuestAddress(gpa)).is_ok()
    }

    fn dma_contains(&self, gpa: u64, len: u64) -> bool {
        len == 0 || self.check_range(GuestAddress(gpa), len as usize, vm_memory::Permissions::ReadWrite)
    }

    fn host_regions(&self) -> Vec<(u64, u64, u64)> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
        let Some(phys) = self.physical_memory() else { return Vec::new() };
        phys.iter()
            .filter_map(|r| {
                let hva = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some((r.start_addr().0, hva as u64, r.len()))
            })
            .collect()
    }
}

/// Why an engine access failed: on hardware this is a GPU page fault, which hangs the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemFault {
    /// The graphics address has no present translation.
    #[error("{space} address {gma:#x} is not mapped")]
    Unmapped {
        /// Address space.
        space: AddrSpace,
        /// Graphics address.
        gma: u64,
    },
    /// The translation names a host address nothing backs.
    #[error("host address {host:#x} (from {space} {gma:#x}) is not backed")]
    Unbacked {
        /// Address space.
        space: AddrSpace,
        /// Graphics address.
        gma: u64,
        /// Host address.
        host: u64,
    },
    /// The access needs a PPGTT and the context has none.
    #[error("PPGTT access at {gma:#x} without a page-table root")]
    NoPpgtt {
        /// Graphics address.
        gma: u64,
    },
}

type Page = Box<[u64; 512]>;

#[derive(Default)]
struct Arena {
    pages: Vec<Option<Page>>,
    free: Vec<usize>,
}

/// The software GPU's memory, shared by its engines and the vGPUs' memory managers.
pub struct SimMemory {
    guests: RwLock<Vec<Option<Arc<dyn GuestDma>>>>,
    arena: RwLock<Arena>,
    ggtt: RwLock<Vec<u64>>,
}

impl std::fmt::Debug for SimMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMemory").field("ggtt_entries", &self.ggtt.read().len()).finish()
    }
}

impl SimMemory {
    /// Memory with a host GGTT of `ggtt_bytes` of address space (all entries not present).
    pub fn new(ggtt_bytes: u64) -> Self {
        SimMemory {
            guests: RwLock::new(vec![None; MAX_GUESTS]),
            arena: RwLock::new(Arena::default()),
            ggtt: RwLock::new(vec![0; (ggtt_bytes / PAGE_SIZE) as usize]),
        }
    }

    /// Attaches a guest's memory; returns its slot.
    pub fn attach(&self, guest: Arc<dyn GuestDma>) -> Option<usize> {
        let mut g = self.guests.write();
        let slot = g.iter().position(Option::is_none)?;
        *g.get_mut(slot)? = Some(guest);
        Some(slot + 1)
    }

    /// Detaches the guest in `slot`.
    pub fn detach(&self, slot: usize) {
        if let Some(s) = slot.checked_sub(1).and_then(|i| self.guests.write().get_mut(i).map(Option::take)) {
            drop(s);
        }
    }

    /// The host address of guest physical `gpa` of `slot`, if the guest has that page.
    pub fn guest_host_addr(&self, slot: usize, gpa: u64, len: u64) -> Option<u64> {
        if gpa.checked_add(len)? > 1 << SLOT_SHIFT {
            return None;
        }
        let g = self.guests.read();
        let guest = g.get(slot.checked_sub(1)?)?.as_ref()?;
        guest.dma_contains(gpa, len).then_some((slot as u64) << SLOT_SHIFT | gpa)
    }

    /// Allocates a zeroed host page; returns its host address.
    pub fn alloc_page(&self) -> Option<u64> {
        let mut a = self.arena.write();
        let i = match a.free.pop() {
            Some(i) => i,
            None if a.pages.len() < MAX_HOST_PAGES => {
                a.pages.push(None);
                a.pages.len() - 1
            }
            None => return None,
        };
        *a.pages.get_mut(i)? = Some(Box::new([0; 512]));
        Some(HOST_BASE + i as u64 * PAGE_SIZE)
    }

    /// Frees a host page from [`SimMemory::alloc_page`].
    pub fn free_page(&self, host: u64) {
        let Some(i) = host_page_index(host) else { return };
        let mut a = self.arena.write();
        if let Some(p) = a.pages.get_mut(i) {
            if p.take().is_some() {
                a.free.push(i);
            }
        }
    }

    /// Host pages allocated now.
    pub fn host_pages(&self) -> usize {
        let a = self.arena.read();
        a.pages.len() - a.free.len()
    }

    /// Writes qwords into a host page at entry `first`.
    pub fn write_host_qwords(&self, host: u64, first: usize, data: &[u64]) {
        let Some(i) = host_page_index(host) else { return };
        let mut a = self.arena.write();
        if let Some(dst) = a.pages.get_mut(i).and_then(Option::as_mut).and_then(|p| p.get_mut(first..)) {
            for (d, s) in dst.iter_mut().zip(data) {
                *d = *s;
            }
        }
    }

    /// Writes `data` at GGTT address `gma` of the host's own memory, backing each page not yet
    /// mapped with a fresh host page (the host's shadow areas).
    pub fn stage_ggtt(&self, gma: u64, data: &[u8]) -> Result<(), String> {
        for (at, r) in page_chunks(gma, data.len()) {
            let index = at / PAGE_SIZE;
            let mut pte = self.read_pte(index);
            if pte & PTE_PRESENT == 0 {
                if index >= self.ggtt_entries() {
                    return Err(format!("GGTT address {at:#x} is past the GGTT"));
                }
                let page = self.alloc_page().ok_or("host page arena exhausted")?;
                pte = page | PTE_PRESENT;
                self.write_pte(index, pte);
            }
            let host = (pte & PTE_ADDR_MASK) + at % PAGE_SIZE;
            let i = host_page_index(host).ok_or_else(|| format!("GGTT address {at:#x} is not host memory"))?;
            let off = (host % PAGE_SIZE) as usize;
            let chunk = data.get(r).unwrap_or_default();
            let mut a = self.arena.write();
            let dst = a
                .pages
                .get_mut(i)
                .and_then(Option::as_mut)
                .and_then(|p| p.as_mut_bytes().get_mut(off..off + chunk.len()))
                .ok_or_else(|| format!("GGTT address {at:#x} maps a freed page"))?;
            dst.copy_from_slice(chunk);
        }
        Ok(())
    }

    /// Reads host-owned or guest memory through the GGTT (tests, the register-level model).
    pub fn read_ggtt(&self, gma: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        let v = self.view(None);
        let r = v.read(AddrSpace::Ggtt, gma, buf);
        self.finish(v);
        r
    }

    /// Writes host-owned or guest memory through the GGTT (only pages already mapped).
    pub fn write_ggtt(&self, gma: u64, data: &[u8]) -> Result<(), MemFault> {
        let mut v = self.view(None);
        let r = v.write(AddrSpace::Ggtt, gma, data);
        self.finish(v);
        r
    }

    /// Writes host memory at `host` directly (host pages or attached guest memory).
    pub fn write_host(&self, host: u64, data: &[u8]) -> bool {
        let mut v = self.view(None);
        let ok = page_chunks(host, data.len())
            .fold(true, |ok, (at, r)| v.write_host(at, data.get(r).unwrap_or_default()) & ok);
        self.finish(v);
        ok
    }

    /// Reads host memory at `host` directly.
    pub fn read_host(&self, host: u64, buf: &mut [u8]) -> bool {
        let v = self.view(None);
        let ok = page_chunks(host, buf.len())
            .fold(true, |ok, (at, r)| buf.get_mut(r).is_some_and(|b| v.read_host(at, b)) & ok);
        self.finish(v);
        ok
    }

    /// Writes host GGTT entry `index`.
    pub fn write_pte(&self, index: u64, pte: u64) {
        if let Some(e) = self.ggtt.write().get_mut(index as usize) {
            *e = pte;
        }
    }

    /// Reads host GGTT entry `index`.
    pub fn read_pte(&self, index: u64) -> u64 {
        self.ggtt.read().get(index as usize).copied().unwrap_or(0)
    }

    /// Entries in the host GGTT.
    pub fn ggtt_entries(&self) -> u64 {
        self.ggtt.read().len() as u64
    }

    /// A consistent view for one engine step: locks taken once, in the order guests, arena, GGTT.
    pub fn view(&self, ppgtt: Option<ShadowRoot>) -> MemView<'_> {
        MemView { guests: self.guests.read(), arena: self.arena.read(), ggtt: self.ggtt.read(), ppgtt, pending: vec![] }
    }

    /// Applies host-page writes an engine step made (under the arena's write lock).
    fn apply(&self, pending: Vec<(u64, Vec<u8>)>) {
        if pending.is_empty() {
            return;
        }
        let mut a = self.arena.write();
        for (host, data) in pending {
            let Some(i) = host_page_index(host) else { continue };
            let off = (host % PAGE_SIZE) as usize;
            if let Some(dst) = a
                .pages
                .get_mut(i)
                .and_then(Option::as_mut)
                .and_then(|p| p.as_mut_bytes().get_mut(off..off + data.len()))
            {
                dst.copy_from_slice(&data);
            }
        }
    }

    /// Lets go of `view`'s locks while `f` runs (applying its host-page writes first), so others
    /// (the host writing GGTT entries, other engines) make progress while an engine waits, as a
    /// semaphore wait does; the view sees their changes afterwards.
    ///
    /// The locks are taken back in the order [`SimMemory::view`] takes them (guests, arena, GGTT):
    /// a view that took one back while holding a later one waits, with a writer queued between,
    /// on a view that holds the first and waits for the second (the writers queue ahead of new
    /// readers), and the engines deadlock.
    pub fn pause<T>(&self, view: &mut MemView<'_>, f: impl FnOnce() -> T) -> T {
        let pending = std::mem::take(&mut view.pending);
        let MemView { guests, arena, ggtt, .. } = view;
        // The innermost `unlocked` re-locks first.
        RwLockReadGuard::unlocked(ggtt, || {
            RwLockReadGuard::unlocked(arena, || {
                RwLockReadGuard::unlocked(guests, || {
                    self.apply(pending);
                    f()
                })
            })
        })
    }

    /// Ends a view, applying its host-page writes.
    pub fn finish(&self, view: MemView<'_>) {
        let MemView { guests, arena, ggtt, pending, .. } = view;
        drop((guests, arena, ggtt));
        self.apply(pending);
    }
}

fn host_page_index(host: u64) -> Option<usize> {
    let i = host.checked_sub(HOST_BASE)? / PAGE_SIZE;
    usize::try_from(i).ok()
}

/// The memory as one engine step sees it. Guest memory is written at once; writes to host pages
/// (rare: status pages, staging) are applied when the view is finished.
pub struct MemView<'a> {
    guests: RwLockReadGuard<'a, Vec<Option<Arc<dyn GuestDma>>>>,
    arena: RwLockReadGuard<'a, Arena>,
    ggtt: RwLockReadGuard<'a, Vec<u64>>,
    ppgtt: Option<ShadowRoot>,
    pending: Vec<(u64, Vec<u8>)>,
}

impl MemView<'_> {
    fn host_page(&self, host: u64) -> Option<&[u64; 512]> {
        self.arena.pages.get(host_page_index(host)?)?.as_deref()
    }

    /// Translates `gma` in `space` to a host address (the rest of its page is contiguous).
    pub fn translate(&self, space: AddrSpace, gma: u64) -> Result<u64, MemFault> {
        let unmapped = MemFault::Unmapped { space, gma };
        match space {
            AddrSpace::Ggtt => {
                let pte = *self.ggtt.get(usize::try_from(gma / PAGE_SIZE).map_err(|_| unmapped)?).ok_or(unmapped)?;
                if pte & PTE_PRESENT == 0 {
                    return Err(unmapped);
                }
                Ok((pte & PTE_ADDR_MASK) | (gma % PAGE_SIZE))
            }
            AddrSpace::Ppgtt => {
                // Like the hardware's walker, read each table wherever its address points: a host
                // page or any attached guest's memory.
                let root = self.ppgtt.ok_or(MemFault::NoPpgtt { gma })?;
                walk_tables(root, gma, |table, i| {
                    let mut e = [0u8; 8];
                    self.read_host(table.checked_add(8 * i as u64)?, &mut e).then(|| u64::from_le_bytes(e))
                })
                .ok_or(unmapped)
            }
        }
    }

    /// Reads host memory (guest or host pages) at `host`; `buf` must not cross a page.
    fn read_host(&self, host: u64, buf: &mut [u8]) -> bool {
        let slot = (host >> SLOT_SHIFT) as usize;
        if (1..=MAX_GUESTS).contains(&slot) {
            let gpa = host & ((1 << SLOT_SHIFT) - 1);
            return self.guests.get(slot - 1).and_then(Option::as_ref).is_some_and(|g| g.dma_read(gpa, buf));
        }
        let off = (host % PAGE_SIZE) as usize;
        let Some(src) = self.host_page(host).and_then(|p| p.as_bytes().get(off..off + buf.len())) else {
            return false;
        };
        buf.copy_from_slice(src);
        // Writes of this step not applied yet are visible to its own reads.
        for (h, data) in &self.pending {
            overlay(*h, data, host, buf);
        }
        true
    }

    fn write_host(&mut self, host: u64, data: &[u8]) -> bool {
        let slot = (host >> SLOT_SHIFT) as usize;
        if (1..=MAX_GUESTS).contains(&slot) {
            let gpa = host & ((1 << SLOT_SHIFT) - 1);
            return self.guests.get(slot - 1).and_then(Option::as_ref).is_some_and(|g| g.dma_write(gpa, data));
        }
        if self.host_page(host).is_none() {
            return false;
        }
        self.pending.push((host, data.to_vec()));
        true
    }

    /// Reads `buf.len()` bytes at `gma`.
    pub fn read(&self, space: AddrSpace, gma: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        for (at, r) in page_chunks(gma, buf.len()) {
            let host = self.translate(space, at)?;
            let Some(chunk) = buf.get_mut(r) else { break };
            if !self.read_host(host, chunk) {
                return Err(MemFault::Unbacked { space, gma: at, host });
            }
        }
        Ok(())
    }

    /// Writes `data` at `gma`.
    pub fn write(&mut self, space: AddrSpace, gma: u64, data: &[u8]) -> Result<(), MemFault> {
        for (at, r) in page_chunks(gma, data.len()) {
            let host = self.translate(space, at)?;
            let Some(chunk) = data.get(r) else { break };
            if !self.write_host(host, chunk) {
                return Err(MemFault::Unbacked { space, gma: at, host });
            }
        }
        Ok(())
    }

    /// Reads a little-endian dword.
    pub fn read_u32(&self, space: AddrSpace, gma: u64) -> Result<u32, MemFault> {
        let mut b = [0u8; 4];
        self.read(space, gma, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian qword.
    pub fn read_u64(&self, space: AddrSpace, gma: u64) -> Result<u64, MemFault> {
        let mut b = [0u8; 8];
        self.read(space, gma, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian dword.
    pub fn write_u32(&mut self, space: AddrSpace, gma: u64, v: u32) -> Result<(), MemFault> {
        self.write(space, gma, &v.to_le_bytes())
    }

    /// Writes a little-endian qword.
    pub fn write_u64(&mut self, space: AddrSpace, gma: u64, v: u64) -> Result<(), MemFault> {
        self.write(space, gma, &v.to_le_bytes())
    }
}

/// Copies the part of a pending write `(h, data)` that overlaps `[host, host + buf.len())`.
fn overlay(h: u64, data: &[u8], host: u64, buf: &mut [u8]) {
    let (start, end) = (h.max(host), (h + data.len() as u64).min(host + buf.len() as u64));
    if start >= end {
        return;
    }
    let (s, d) = ((start - h) as usize, (start - host) as usize);
    let n = (end - start) as usize;
    if let (Some(src), Some(dst)) = (data.get(s..s + n), buf.get_mut(d..d + n)) {
        dst.copy_from_slice(src);
    }
}

/// The host side of one vGPU's memory on the software GPU: DMA mapping of its guest pages, shadow
/// page-table pages and host GGTT writes.
pub struct SimVgpuMemory {
    mem: Arc<SimMemory>,
    slot: usize,
    tables: HashSet<u64>,
    scratch: u64,
}

impl std::fmt::Debug for SimVgpuMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVgpuMemory").field("slot", &self.slot).field("tables", &self.tables.len()).finish()
    }
}

impl SimVgpuMemory {
    pub(super) fn new(mem: Arc<SimMemory>, slot: usize) -> Self {
        SimVgpuMemory { mem, slot, tables: HashSet::new(), scratch: 0 }
    }

    /// Allocates the vGPU's GGTT scratch page.
    pub(super) fn alloc_scratch(&mut self) -> Result<(), String> {
        self.scratch = self.mem.alloc_page().ok_or("host page arena exhausted")?;
        Ok(())
    }

    /// Shadow table pages held now.
    pub fn tables(&self) -> usize {
        self.tables.len()
    }
}

impl Drop for SimVgpuMemory {
    fn drop(&mut self) {
        for t in self.tables.drain() {
            self.mem.free_page(t);
        }
        if self.scratch != 0 {
            self.mem.free_page(self.scratch);
        }
        self.mem.detach(self.slot);
    }
}

impl crate::mm::DmaMapper for SimVgpuMemory {
    fn map_page(&mut self, gpa: GuestAddress) -> Result<u64, String> {
        self.mem.guest_host_addr(self.slot, gpa.0, PAGE_SIZE).ok_or_else(|| format!("{:#x} is not guest memory", gpa.0))
    }

    fn unmap_page(&mut self, _host: u64) {}

    fn map_range(&mut self, gpa: GuestAddress, len: u64) -> Result<Option<u64>, String> {
        Ok(self.mem.guest_host_addr(self.slot, gpa.0, len))
    }
}

impl crate::mm::ShadowMemory for SimVgpuMemory {
    fn alloc_table(&mut self) -> Result<u64, String> {
        let t = self.mem.alloc_page().ok_or("host page arena exhausted")?;
        self.tables.insert(t);
        Ok(t)
    }

    fn free_table(&mut self, table: u64) {
        if self.tables.remove(&table) {
            self.mem.free_page(table);
        }
    }

    fn write_entries(&mut self, table: u64, first: usize, entries: &[u64]) {
        if self.tables.contains(&table) {
            self.mem.write_host_qwords(table, first, entries);
        }
    }
}

/// Writes the software GPU's host GGTT.
#[derive(Debug)]
pub struct SimGgttWriter(Arc<SimMemory>);

impl crate::mm::HostGgtt for SimGgttWriter {
    fn write_pte(&mut self, index: u64, pte: u64) {
        self.0.write_pte(index, pte);
    }
}

impl crate::host::VgpuMemory for SimVgpuMemory {
    fn scratch_page(&self) -> u64 {
        self.scratch
    }

    fn ggtt_writer(&self) -> Box<dyn crate::mm::HostGgtt + Send> {
        Box::new(SimGgttWriter(self.mem.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn engines_pausing_beside_host_writers_never_deadlock() {
        // Engines that let go of their view while they wait (semaphores, real-time pacing) beside
        // the host allocating pages and writing GGTT entries: with the locks taken back in another
        // order than a view takes them, this deadlocked within a few hundred ms.
        let mem = Arc::new(SimMemory::new(1 << 24));
        let stop = Arc::new(AtomicBool::new(false));
        let (done, finished) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for k in 0..4 {
            let (mem, stop, done) = (mem.clone(), stop.clone(), done.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match k {
                        0 | 1 => {
                            let mut v = mem.view(None);
                            mem.pause(&mut v, std::thread::yield_now);
                            mem.finish(v);
                        }
                        2 => {
                            if let Some(p) = mem.alloc_page() {
                                mem.free_page(p);
                            }
                        }
                        _ => mem.write_pte(n % 16, 0),
                    }
                    n += 1;
                }
                let _ = done.send(());
            }));
        }
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(finished.recv_timeout(left).is_ok(), "the memory locks deadlocked");
        }
    }
}
