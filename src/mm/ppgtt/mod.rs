//! The shadow PPGTT: per-process page tables of a guest, shadowed into host tables whose leaves
//! point only into that guest's memory.
//!
//! A guest context names its page tables by guest physical address: a PML4 (4-level) or four page
//! directories (legacy 3-level). The GPU must never walk those: a hostile guest could point a leaf
//! at any host page. [`ShadowPpgtt`] reads the guest tables, validates every entry and builds shadow
//! tables in host memory ([`ShadowMemory`]) whose leaves are DMA mappings of guest pages
//! ([`DmaMapper`]). Entries that are not present or name memory the guest does not own point at the
//! vGPU's own scratch chain, so the GPU reads zeros instead of faulting.
//!
//! * Pages: 4 KiB; 64 KiB (a PD entry with IPS set: split into 16 shadow 4 KiB entries); 2 MiB and
//!   1 GiB (kept huge when the mapper maps them contiguously, else split into shadow tables).
//! * Cache: shadow tables are shared by guest table (address, level, 64K mode) with reference
//!   counts; roots are cached by their guest value, pinned by in-flight workloads, pre-built by
//!   PVINFO create notifications and dropped by destroy notifications or LRU eviction.
//! * Updates: the VMM can report writes to guest table pages through a [`PageTracker`]
//!   (write-protection or dirty logging) and [`ShadowPpgtt::page_written`]; tables the tracker does
//!   not cover are re-read and diffed against their snapshot each time a workload pins a root that
//!   reaches them, so an untracked guest change is never missed.

pub mod entry;
mod node;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::cmd::{AddrSpace, GmTranslate, PAGE_SIZE};
use crate::mm::DmaMapper;
use entry::ADDR_MASK;
pub use entry::{PpgttRoot, ShadowRoot};
use node::{Key, Node};

/// Host memory for shadow page tables, as the host backend provides it.
pub trait ShadowMemory {
    /// Allocates a zeroed, 4 KiB-aligned host page for a shadow table; returns its host address.
    fn alloc_table(&mut self) -> Result<u64, String>;
    /// Frees a table from `alloc_table`.
    fn free_table(&mut self, table: u64);
    /// Writes `entries` into `table` starting at entry `first`.
    fn write_entries(&mut self, table: u64, first: usize, entries: &[u64]);
}

/// Tells the cache when the guest writes its page-table pages. The VMM implements it with
/// write-protection (report each trapped write through [`ShadowPpgtt::page_written`]) or with its
/// dirty log ([`PageTracker::drain_writes`]).
pub trait PageTracker: Send {
    /// Starts reporting writes to the guest page at `gpa`. `false`: this page cannot be tracked;
    /// the cache then re-validates it before every use.
    fn track(&mut self, gpa: GuestAddress) -> bool;
    /// Stops reporting writes to `gpa`.
    fn untrack(&mut self, gpa: GuestAddress);
    /// Appends the tracked pages written since the last call (dirty-log trackers).
    fn drain_writes(&mut self, out: &mut Vec<GuestAddress>) {
        let _ = out;
    }
}

/// The safe default tracker: tracks nothing, so every table a workload can reach is re-read and
/// compared with its snapshot when the workload pins its root.
#[derive(Clone, Copy, Debug, Default)]
pub struct Revalidate;

impl PageTracker for Revalidate {
    fn track(&mut self, _gpa: GuestAddress) -> bool {
        false
    }
    fn untrack(&mut self, _gpa: GuestAddress) {}
}

/// Bounds of one vGPU's shadow PPGTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PpgttLimits {
    /// Shadow tables (4 KiB host pages each) the vGPU may hold.
    pub max_tables: usize,
    /// Roots kept cached; beyond this the least recently used unpinned root is dropped.
    pub max_roots: usize,
}

impl Default for PpgttLimits {
    /// 16384 tables (64 MiB of host memory, enough to map 32 GiB in 4 KiB pages) and 64 roots.
    fn default() -> Self {
        PpgttLimits { max_tables: 16384, max_roots: 64 }
    }
}

/// Errors of the shadow PPGTT. Each fails the workload that needed the root (a virtual hang of
/// that vGPU); the cache stays consistent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PpgttError {
    /// A root table is not in guest memory.
    #[error("PPGTT root table at guest address {0:#x} is not guest memory")]
    BadRoot(u64),
    /// A 4-level root of 0, or a 3-level root with no page directory.
    #[error("PPGTT root is empty")]
    EmptyRoot,
    /// Shadowing needs more tables than the vGPU may hold, even after evicting unpinned roots.
    #[error("shadow PPGTT needs more than {0} tables")]
    TooManyTables(usize),
    /// The host could not allocate a table page.
    #[error("allocating a shadow table failed: {0}")]
    Alloc(String),
    /// A guest page could not be mapped for the GPU.
    #[error("mapping guest page {gpa:#x} for the GPU failed: {why}")]
    Map {
        /// Guest physical address.
        gpa: u64,
        /// The mapper's reason.
        why: String,
    },
    /// Unpin of a root that is not pinned.
    #[error("PPGTT root {0:?} is not pinned")]
    NotPinned(PpgttRoot),
}

/// Counters of one vGPU's shadow PPGTT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PpgttStats {
    /// Shadow tables alive (scratch chain excluded).
    pub tables: usize,
    /// Guest pages (or contiguous ranges) mapped for the GPU.
    pub mappings: usize,
    /// Guest entries that named memory the guest does not own (shadowed as scratch).
    pub invalid_entries: u64,
    /// Guest tables re-read and compared with their snapshot.
    pub revalidations: u64,
    /// Shadow entries rewritten because the guest changed an entry.
    pub updated_entries: u64,
    /// Roots dropped to make room.
    pub evictions: u64,
}

/// A cached root.
#[derive(Debug)]
struct RootEntry {
    /// Top nodes (id + 1; 0 where a 3-level root has no directory).
    top: [u32; 4],
    shadow: ShadowRoot,
    pins: u32,
    guest_refs: u32,
    /// The guest announced its destruction while a workload pinned it: drop at the last unpin.
    doomed: bool,
    last_used: u64,
}

/// Tracking state of one guest page that holds shadowed tables.
#[derive(Clone, Copy, Debug)]
struct PageTrack {
    nodes: u32,
    tracked: bool,
}

/// One vGPU's shadow PPGTT cache.
pub struct ShadowPpgtt {
    limits: PpgttLimits,
    nodes: Vec<Option<Node>>,
    free: Vec<u32>,
    by_key: HashMap<Key, u32>,
    roots: HashMap<PpgttRoot, RootEntry>,
    /// Host addresses of the scratch page and the scratch PT, PD and PDP.
    scratch: [u64; 4],
    tracker: Box<dyn PageTracker>,
    pages: HashMap<u64, PageTrack>,
    dirty: Vec<u32>,
    drained: Vec<GuestAddress>,
    /// Reused buffer for re-reading a guest table.
    buf: Vec<u64>,
    untracked_nodes: usize,
    epoch: u64,
    tick: u64,
    stats: PpgttStats,
}

impl std::fmt::Debug for ShadowPpgtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowPpgtt").field("roots", &self.roots.len()).field("stats", &self.stats).finish()
    }
}

impl ShadowPpgtt {
    /// An empty cache; allocates the vGPU's scratch chain (a zeroed page, and a PT, PD and PDP
    /// whose entries all point one level down the chain).
    ///
    /// ```
    /// use shadowgpu::mm::ppgtt::{testing::HostTables, PpgttLimits, PpgttRoot, Revalidate, ShadowPpgtt};
    /// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    /// // PML4 at 0x1000 -> PDP at 0x2000 -> PD at 0x3000 -> PT at 0x4000 -> page 0x8000.
    /// for (table, next) in [(0x1000u64, 0x2000u64), (0x2000, 0x3000), (0x3000, 0x4000), (0x4000, 0x8000)] {
    ///     mem.write_obj(next | 3, GuestAddress(table)).unwrap();
    /// }
    /// let mut host = HostTables::default();
    /// let mut ppgtt = ShadowPpgtt::new(&mut host, PpgttLimits::default(), Box::new(Revalidate)).unwrap();
    /// let shadow = ppgtt.pin(&mem, &mut host, PpgttRoot::L4(0x1000)).unwrap();
    /// // The GPU's walk of the shadow tables reaches the host mapping of guest page 0x8000.
    /// assert_eq!(host.walk(shadow, 0x123), Some(HostTables::host_of(0x8000) + 0x123));
    /// ppgtt.unpin(&mut host, PpgttRoot::L4(0x1000)).unwrap();
    /// ```
    pub fn new<H>(host: &mut H, limits: PpgttLimits, tracker: Box<dyn PageTracker>) -> Result<Self, PpgttError>
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let mut scratch = [0u64; 4];
        for slot in scratch.iter_mut() {
            *slot = host.alloc_table().map_err(PpgttError::Alloc)?;
        }
        for level in 1..4usize {
            let below = scratch.get(level - 1).copied().unwrap_or(0);
            let table = scratch.get(level).copied().unwrap_or(0);
            host.write_entries(table, 0, &[(below & ADDR_MASK) | entry::PRESENT | entry::RW; entry::ENTRIES]);
        }
        Ok(ShadowPpgtt {
            limits,
            nodes: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            roots: HashMap::new(),
            scratch,
            tracker,
            pages: HashMap::new(),
            dirty: Vec::new(),
            drained: Vec::new(),
            buf: Vec::new(),
            untracked_nodes: 0,
            epoch: 0,
            tick: 0,
            stats: PpgttStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> PpgttStats {
        self.stats
    }

    /// Host address of the vGPU's scratch page (where unmapped graphics addresses land).
    pub fn scratch_page(&self) -> u64 {
        self.scratch[0]
    }

    /// Shadows `root` (or refreshes its cached shadow) and pins it for a workload; returns the
    /// values the shadow context loads into its PDP registers. Pair with [`ShadowPpgtt::unpin`].
    pub fn pin<M, H>(&mut self, mem: &M, host: &mut H, root: PpgttRoot) -> Result<ShadowRoot, PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let root = root.normalized();
        let shadow = self.get_root(mem, host, root)?;
        if let Some(r) = self.roots.get_mut(&root) {
            r.pins = r.pins.saturating_add(1);
        }
        Ok(shadow)
    }

    /// Ends a workload's use of `root`. A root the guest announced destroyed is dropped now.
    pub fn unpin<H>(&mut self, host: &mut H, root: PpgttRoot) -> Result<(), PpgttError>
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let root = root.normalized();
        let r = self.roots.get_mut(&root).filter(|r| r.pins > 0).ok_or(PpgttError::NotPinned(root))?;
        r.pins -= 1;
        if r.pins == 0 && r.doomed {
            self.drop_root(host, root);
        }
        Ok(())
    }

    /// PVINFO "PPGTT create": shadow `root` ahead of its first workload and keep it cached.
    pub fn notify_create<M, H>(&mut self, mem: &M, host: &mut H, root: PpgttRoot) -> Result<(), PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let root = root.normalized();
        self.get_root(mem, host, root)?;
        if let Some(r) = self.roots.get_mut(&root) {
            r.guest_refs = r.guest_refs.saturating_add(1);
            r.doomed = false;
        }
        Ok(())
    }

    /// PVINFO "PPGTT destroy": drop the shadow of `root` once no workload pins it. Unknown roots
    /// are ignored (the guest may announce a destroy for a table set it never used).
    pub fn notify_destroy<H>(&mut self, host: &mut H, root: PpgttRoot)
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let root = root.normalized();
        let Some(r) = self.roots.get_mut(&root) else { return };
        r.guest_refs = r.guest_refs.saturating_sub(1);
        if r.guest_refs == 0 {
            if r.pins == 0 {
                self.drop_root(host, root);
            } else {
                r.doomed = true; // dropped when its last workload unpins it
            }
        }
    }

    /// Reports a guest write to the page at `gpa` (a write-protection fault the VMM handled). The
    /// shadow tables built from that page are re-read before the next workload runs.
    pub fn page_written(&mut self, gpa: GuestAddress) {
        let page = gpa.0 & ADDR_MASK;
        if !self.pages.contains_key(&page) {
            return;
        }
        for key in Key::all_at(page) {
            if let Some(&id) = self.by_key.get(&key) {
                if let Some(n) = self.node_mut(id) {
                    if !n.dirty {
                        n.dirty = true;
                        self.dirty.push(id);
                    }
                }
            }
        }
    }

    /// Drops every root and shadow table, keeping the scratch chain (device-model reset).
    pub fn clear<H>(&mut self, host: &mut H)
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let all: Vec<PpgttRoot> = self.roots.keys().copied().collect();
        for root in all {
            self.drop_root(host, root);
        }
    }

    /// Drops everything and frees the scratch chain (vGPU destruction).
    pub fn destroy<H>(mut self, host: &mut H)
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        self.clear(host);
        for t in self.scratch {
            host.free_table(t);
        }
    }

    /// A translation of PPGTT addresses through the shadowed (validated) view of `root`, for the
    /// command scanner. GGTT addresses are not translated here.
    pub fn translator(&self, root: PpgttRoot) -> PpgttTranslation<'_> {
        PpgttTranslation { ppgtt: self, root: self.roots.get(&root.normalized()) }
    }

    /// Looks up or builds `root`, then brings every table it reaches up to date with the guest.
    fn get_root<M, H>(&mut self, mem: &M, host: &mut H, root: PpgttRoot) -> Result<ShadowRoot, PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        self.check_root(mem, root)?;
        self.tick = self.tick.wrapping_add(1);
        self.epoch = self.epoch.wrapping_add(1);
        self.sync_dirty(mem, host)?;
        if !self.roots.contains_key(&root) {
            self.make_room_for_root(host);
            loop {
                match self.build_root(mem, host, root) {
                    Ok(entry) => {
                        self.roots.insert(root, entry);
                        break;
                    }
                    Err(PpgttError::TooManyTables(n)) => {
                        if !self.evict_one(host) {
                            return Err(PpgttError::TooManyTables(n));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let tick = self.tick;
        let (top, shadow) = match self.roots.get_mut(&root) {
            Some(r) => {
                r.last_used = tick;
                (r.top, r.shadow)
            }
            None => return Err(PpgttError::EmptyRoot),
        };
        if self.untracked_nodes > 0 {
            self.revalidate_from(mem, host, &top)?;
        }
        Ok(shadow)
    }

    fn check_root<M: GuestMemory + ?Sized>(&self, mem: &M, root: PpgttRoot) -> Result<(), PpgttError> {
        let ok = |a: u64| mem.check_range(GuestAddress(a), PAGE_SIZE as usize, Permissions::ReadWrite);
        match root {
            PpgttRoot::L4(0) => Err(PpgttError::EmptyRoot),
            PpgttRoot::L4(a) if !ok(a) => Err(PpgttError::BadRoot(a)),
            PpgttRoot::L4(_) => Ok(()),
            PpgttRoot::L3(p) if p.iter().all(|&a| a == 0) => Err(PpgttError::EmptyRoot),
            PpgttRoot::L3(p) => match p.iter().find(|&&a| a != 0 && !ok(a)) {
                Some(&a) => Err(PpgttError::BadRoot(a)),
                None => Ok(()),
            },
        }
    }

    fn build_root<M, H>(&mut self, mem: &M, host: &mut H, root: PpgttRoot) -> Result<RootEntry, PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let mut top = [0u32; 4];
        let shadow = match root {
            PpgttRoot::L4(a) => {
                let id = self.get_or_build(mem, host, Key::new(a, 4, false))?;
                top[0] = id + 1;
                ShadowRoot::L4(self.node(id).map_or(0, |n| n.host))
            }
            PpgttRoot::L3(p) => {
                let mut pdps = [self.scratch[2]; 4];
                for (i, &a) in p.iter().enumerate().filter(|(_, &a)| a != 0) {
                    match self.get_or_build(mem, host, Key::new(a, 2, false)) {
                        Ok(id) => {
                            if let (Some(t), Some(s)) = (top.get_mut(i), pdps.get_mut(i)) {
                                *t = id + 1;
                                *s = self.node(id).map_or(0, |n| n.host);
                            }
                        }
                        Err(e) => {
                            for t in top.into_iter().filter(|&t| t != 0) {
                                self.unref(host, t - 1);
                            }
                            return Err(e);
                        }
                    }
                }
                ShadowRoot::L3(pdps)
            }
        };
        Ok(RootEntry { top, shadow, pins: 0, guest_refs: 0, doomed: false, last_used: self.tick })
    }

    fn drop_root<H>(&mut self, host: &mut H, root: PpgttRoot)
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        if let Some(r) = self.roots.remove(&root) {
            for t in r.top.into_iter().filter(|&t| t != 0) {
                self.unref(host, t - 1);
            }
        }
    }

    /// Drops the least recently used root that no workload pins; false if there is none.
    fn evict_one<H>(&mut self, host: &mut H) -> bool
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let victim = self.roots.iter().filter(|(_, r)| r.pins == 0).min_by_key(|(_, r)| r.last_used).map(|(k, _)| *k);
        match victim {
            Some(root) => {
                self.drop_root(host, root);
                self.stats.evictions += 1;
                true
            }
            None => false,
        }
    }

    fn make_room_for_root<H>(&mut self, host: &mut H)
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        while self.roots.len() >= self.limits.max_roots.max(1) {
            if !self.evict_one(host) {
                break;
            }
        }
    }
}

/// PPGTT address translation through a pinned root's validated tables (see
/// [`ShadowPpgtt::translator`]): the guest physical address the shadow maps, or `None` where the
/// shadow points at scratch.
#[derive(Debug)]
pub struct PpgttTranslation<'a> {
    ppgtt: &'a ShadowPpgtt,
    root: Option<&'a RootEntry>,
}

impl GmTranslate for PpgttTranslation<'_> {
    fn translate(&self, space: AddrSpace, gma: u64) -> Option<GuestAddress> {
        if space != AddrSpace::Ppgtt {
            return None;
        }
        let r = self.root?;
        let (mut id, mut level) = match r.shadow {
            ShadowRoot::L4(_) if gma >> 48 == 0 => (r.top[0].checked_sub(1)?, 4),
            ShadowRoot::L3(_) if gma >> 32 == 0 => (r.top.get(entry::index(3, gma) & 3)?.checked_sub(1)?, 2),
            _ => return None,
        };
        loop {
            match self.ppgtt.node(id)?.lookup(level, gma)? {
                node::Step::Leaf(gpa) => return Some(GuestAddress(gpa)),
                node::Step::Table(child) => {
                    id = child;
                    level -= 1;
                }
            }
        }
    }
}

/// The PVINFO `g2v_notify` values for PPGTT lifetimes, decoded: `Some((create, root))`.
pub fn g2v_ppgtt_notification(value: u32, pdps: [u64; 4]) -> Option<(bool, PpgttRoot)> {
    match value {
        2 => Some((true, PpgttRoot::L3(pdps))),
        3 => Some((false, PpgttRoot::L3(pdps))),
        4 => Some((true, PpgttRoot::L4(pdps[0]))),
        5 => Some((false, PpgttRoot::L4(pdps[0]))),
        _ => None,
    }
}

pub mod testing;
