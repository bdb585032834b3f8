//! Shadow tables: one node per shadowed guest table (or per split huge page) and the operations
//! that build, update and release them.

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};
use zerocopy::IntoBytes;

use super::entry::{self, Level, ADDR_MASK, ENTRIES, FLAG_MASK, IPS_64K, LARGE_PAT, PRESENT, PS, RW};
use super::{PageTrack, PpgttError, ShadowMemory, ShadowPpgtt};
use crate::cmd::PAGE_SIZE;
use crate::mm::DmaMapper;

/// Identity of a shadowed guest table: the same page used at two levels (or as a 4 KiB and a
/// 64 KiB page table) is shadowed twice, so the level always drops by one along a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    gpa: u64,
    level: Level,
    ips: bool,
}

impl Key {
    pub(super) fn new(gpa: u64, level: Level, ips: bool) -> Self {
        Key { gpa: gpa & ADDR_MASK, level, ips: ips && level == 1 }
    }

    /// Every key a guest page can be shadowed under.
    pub(super) fn all_at(page: u64) -> [Key; 5] {
        [
            Key::new(page, 1, false),
            Key::new(page, 1, true),
            Key::new(page, 2, false),
            Key::new(page, 3, false),
            Key::new(page, 4, false),
        ]
    }
}

/// One shadow table.
pub(super) struct Node {
    /// The guest table it shadows; `None` for a table made by splitting a huge page.
    key: Option<Key>,
    level: Level,
    /// A page table of 64 KiB pages (only every 16th guest entry is used).
    ips: bool,
    /// Host address of the shadow table.
    pub(super) host: u64,
    /// The guest entries as last shadowed (zero for split tables).
    guest: Box<[u64; ENTRIES]>,
    /// The shadow entries as written to the host table.
    shadow: Box<[u64; ENTRIES]>,
    /// Child node id + 1 per entry, 0 if none.
    kids: Box<[u32; ENTRIES]>,
    /// Entries that hold a DMA mapping.
    mapped: [u64; ENTRIES / 64],
    refs: u32,
    pub(super) dirty: bool,
    /// The pin (epoch) that built it: nothing to re-validate in that pin.
    created: u64,
    /// The last pin whose re-validation walk reached it.
    visited: u64,
    tracked: bool,
}

/// One step of a translation walk.
pub(super) enum Step {
    /// The walk ends at this guest physical address.
    Leaf(u64),
    /// Continue in this child node.
    Table(u32),
}

impl Node {
    fn is_mapped(&self, i: usize) -> bool {
        self.mapped.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set_mapped(&mut self, i: usize, on: bool) {
        if let Some(w) = self.mapped.get_mut(i / 64) {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    /// The next step for `gma` in this guest-backed table at `level`, or `None` where the shadow
    /// maps scratch.
    pub(super) fn lookup(&self, level: Level, gma: u64) -> Option<Step> {
        let i = entry::index(level, gma);
        if self.ips {
            let e = *self.guest.get(i & !15)?;
            return self.is_mapped(i).then_some(Step::Leaf((e & ADDR_MASK & !0xffff) | (gma & 0xffff)));
        }
        let e = *self.guest.get(i)?;
        let kid = *self.kids.get(i)?;
        if entry::is_leaf(level, e) {
            let covered = kid != 0 || self.is_mapped(i);
            return covered
                .then_some(Step::Leaf((e & entry::leaf_addr_mask(level)) | (gma & (entry::span(level) - 1))));
        }
        kid.checked_sub(1).map(Step::Table)
    }
}

/// What an entry held before it was rewritten; released after the new entry is in the host table.
struct Old {
    level: Level,
    shadow: u64,
    kid: u32,
    mapped: bool,
}

/// Reads a guest table page (little-endian entries); an unreadable page reads as all zero.
fn read_table<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, out: &mut [u64]) {
    if mem.read_slice(out.as_mut_bytes(), GuestAddress(gpa)).is_err() {
        out.fill(0);
    }
    for e in out.iter_mut() {
        *e = u64::from_le(*e);
    }
}

impl ShadowPpgtt {
    pub(super) fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.get(id as usize)?.as_ref()
    }

    pub(super) fn node_mut(&mut self, id: u32) -> Option<&mut Node> {
        self.nodes.get_mut(id as usize)?.as_mut()
    }

    /// The entry a table at `level` holds where it maps nothing: the next scratch table down.
    fn scratch_for(&self, level: Level) -> u64 {
        let below = self.scratch.get(usize::from(level.saturating_sub(1))).copied().unwrap_or(self.scratch[0]);
        (below & ADDR_MASK) | PRESENT | RW
    }

    fn owns<M: GuestMemory + ?Sized>(&mut self, mem: &M, gpa: u64, len: u64) -> bool {
        let ok = usize::try_from(len).is_ok_and(|n| mem.check_range(GuestAddress(gpa), n, Permissions::ReadWrite));
        if !ok {
            self.stats.invalid_entries += 1;
        }
        ok
    }

    fn alloc_node<H>(&mut self, host: &mut H, key: Option<Key>, level: Level, ips: bool) -> Result<u32, PpgttError>
    where
        H: ShadowMemory + ?Sized,
    {
        if self.stats.tables >= self.limits.max_tables {
            return Err(PpgttError::TooManyTables(self.limits.max_tables));
        }
        let table = host.alloc_table().map_err(PpgttError::Alloc)?;
        let node = Node {
            key,
            level,
            ips,
            host: table,
            guest: Box::new([0; ENTRIES]),
            shadow: Box::new([self.scratch_for(level); ENTRIES]),
            kids: Box::new([0; ENTRIES]),
            mapped: [0; ENTRIES / 64],
            refs: 1,
            dirty: false,
            created: self.epoch,
            visited: 0,
            tracked: false,
        };
        self.stats.tables += 1;
        Ok(match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.nodes.get_mut(id as usize) {
                    *slot = Some(node);
                }
                id
            }
            None => {
                self.nodes.push(Some(node));
                (self.nodes.len() - 1) as u32
            }
        })
    }

    /// The shadow of guest table `key`, shared if it exists (one more reference), else built.
    pub(super) fn get_or_build<M, H>(&mut self, mem: &M, host: &mut H, key: Key) -> Result<u32, PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(n) = self.node_mut(id) {
                n.refs = n.refs.saturating_add(1);
                return Ok(id);
            }
        }
        let id = self.alloc_node(host, Some(key), key.level, key.ips)?;
        if let Some(n) = self.node_mut(id) {
            read_table(mem, key.gpa, n.guest.as_mut_slice());
        }
        self.by_key.insert(key, id);
        self.track_page(key.gpa, id);
        let step = if key.ips { 16 } else { 1 };
        for i in (0..ENTRIES).step_by(step) {
            let e = self.node(id).and_then(|n| n.guest.get(i).copied()).unwrap_or(0);
            if let Err(err) = self.set_entry(mem, host, id, i, e) {
                self.unref(host, id);
                return Err(err);
            }
        }
        self.write_range(host, id, 0, ENTRIES);
        Ok(id)
    }

    /// Shadows guest entry `e` into entry `i` of node `id`, which holds scratch there.
    fn set_entry<M, H>(&mut self, mem: &M, host: &mut H, id: u32, i: usize, e: u64) -> Result<(), PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let Some((level, ips)) = self.node(id).map(|n| (n.level, n.ips)) else { return Ok(()) };
        if e & PRESENT == 0 {
            return Ok(());
        }
        if ips {
            let gpa = e & ADDR_MASK & !0xffff;
            if !self.owns(mem, gpa, 0x10000) {
                return Ok(());
            }
            for j in 0..16u64 {
                let h = self.map_page(host, gpa + j * PAGE_SIZE)?;
                self.put(id, i + j as usize, (h & ADDR_MASK) | (e & FLAG_MASK), 0, true);
            }
            return Ok(());
        }
        if entry::is_leaf(level, e) {
            let (gpa, len) = (e & entry::leaf_addr_mask(level), entry::span(level));
            if !self.owns(mem, gpa, len) {
                return Ok(());
            }
            if level == 1 {
                let h = self.map_page(host, gpa)?;
                self.put(id, i, (h & ADDR_MASK) | (e & FLAG_MASK), 0, true);
            } else if let Some(h) = self.map_huge(host, gpa, len)? {
                self.put(id, i, h | (e & (FLAG_MASK | LARGE_PAT)), 0, true);
            } else {
                let kid = self.build_split(host, level - 1, gpa, e)?;
                let table = self.node(kid).map_or(0, |n| n.host);
                self.put(id, i, table | PRESENT | RW, kid + 1, false);
            }
            return Ok(());
        }
        let gpa = e & ADDR_MASK;
        if !self.owns(mem, gpa, PAGE_SIZE) {
            return Ok(());
        }
        let kid = self.get_or_build(mem, host, Key::new(gpa, level - 1, level == 2 && e & IPS_64K != 0))?;
        let table = self.node(kid).map_or(0, |n| n.host);
        self.put(id, i, table | (e & FLAG_MASK & !PS & !IPS_64K), kid + 1, false);
        Ok(())
    }

    /// A shadow table at `level` mapping the huge guest page at `gpa` (entry `e`) in smaller pages.
    fn build_split<H>(&mut self, host: &mut H, level: Level, gpa: u64, e: u64) -> Result<u32, PpgttError>
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let id = self.alloc_node(host, None, level, false)?;
        let span = entry::span(level);
        for i in 0..ENTRIES {
            let sub = gpa + i as u64 * span;
            let r = if level == 1 {
                self.map_page(host, sub)
                    .map(|h| self.put(id, i, (h & ADDR_MASK) | entry::large_flags_to_small(e), 0, true))
            } else {
                match self.map_huge(host, sub, span) {
                    Ok(Some(h)) => {
                        self.put(id, i, h | (e & (FLAG_MASK | LARGE_PAT)), 0, true);
                        Ok(())
                    }
                    Ok(None) => self.build_split(host, level - 1, sub, e).map(|kid| {
                        let table = self.node(kid).map_or(0, |n| n.host);
                        self.put(id, i, table | PRESENT | RW, kid + 1, false)
                    }),
                    Err(err) => Err(err),
                }
            };
            if let Err(err) = r {
                self.unref(host, id);
                return Err(err);
            }
        }
        self.write_range(host, id, 0, ENTRIES);
        Ok(id)
    }

    fn map_page<H: DmaMapper + ?Sized>(&mut self, host: &mut H, gpa: u64) -> Result<u64, PpgttError> {
        let h = host.map_page(GuestAddress(gpa)).map_err(|why| PpgttError::Map { gpa, why })?;
        self.stats.mappings += 1;
        Ok(h)
    }

    /// A contiguous, `len`-aligned mapping of `len` bytes at `gpa`, if the mapper gives one.
    fn map_huge<H: DmaMapper + ?Sized>(&mut self, host: &mut H, gpa: u64, len: u64) -> Result<Option<u64>, PpgttError> {
        match host.map_range(GuestAddress(gpa), len).map_err(|why| PpgttError::Map { gpa, why })? {
            Some(h) if h % len == 0 && h & !ADDR_MASK == 0 => {
                self.stats.mappings += 1;
                Ok(Some(h))
            }
            Some(h) => {
                host.unmap_range(h, len);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn put(&mut self, id: u32, i: usize, shadow: u64, kid: u32, mapped: bool) {
        if let Some(n) = self.node_mut(id) {
            if let (Some(s), Some(k)) = (n.shadow.get_mut(i), n.kids.get_mut(i)) {
                *s = shadow;
                *k = kid;
                n.set_mapped(i, mapped);
            }
        }
    }

    fn write_range<H: ShadowMemory + ?Sized>(&self, host: &mut H, id: u32, from: usize, to: usize) {
        if let Some(n) = self.node(id) {
            if let Some(s) = n.shadow.get(from..to) {
                host.write_entries(n.host, from, s);
            }
        }
    }

    /// Resets entry `i` of `id` to scratch (in the node only) and returns what it held.
    fn take_entry(&mut self, id: u32, i: usize) -> Option<Old> {
        let level = self.node(id)?.level;
        let scratch = self.scratch_for(level);
        let n = self.node_mut(id)?;
        let mapped = n.is_mapped(i);
        n.set_mapped(i, false);
        let kid = std::mem::take(n.kids.get_mut(i)?);
        let shadow = std::mem::replace(n.shadow.get_mut(i)?, scratch);
        Some(Old { level, shadow, kid, mapped })
    }

    /// Releases what an entry held: its mapping, or its reference on a child table.
    fn release<H>(&mut self, host: &mut H, old: Old)
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        if old.mapped {
            if old.level == 1 {
                host.unmap_page(old.shadow & ADDR_MASK);
            } else {
                host.unmap_range(old.shadow & entry::leaf_addr_mask(old.level), entry::span(old.level));
            }
            self.stats.mappings = self.stats.mappings.saturating_sub(1);
        }
        if let Some(kid) = old.kid.checked_sub(1) {
            self.unref(host, kid);
        }
    }

    /// Drops one reference on `id`; at zero releases its entries, its tracking and its table.
    pub(super) fn unref<H>(&mut self, host: &mut H, id: u32)
    where
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let Some(n) = self.node_mut(id) else { return };
        n.refs = n.refs.saturating_sub(1);
        if n.refs > 0 {
            return;
        }
        for i in 0..ENTRIES {
            if let Some(old) = self.take_entry(id, i) {
                if old.mapped || old.kid != 0 {
                    self.release(host, old);
                }
            }
        }
        let Some(n) = self.nodes.get_mut(id as usize).and_then(Option::take) else { return };
        self.free.push(id);
        self.stats.tables = self.stats.tables.saturating_sub(1);
        if let Some(key) = n.key {
            self.by_key.remove(&key);
            self.untrack_page(key.gpa, n.tracked);
        }
        host.free_table(n.host);
    }

    fn track_page(&mut self, gpa: u64, id: u32) {
        let t = self.pages.entry(gpa).or_insert(PageTrack { nodes: 0, tracked: false });
        if t.nodes == 0 {
            t.tracked = self.tracker.track(GuestAddress(gpa));
        }
        t.nodes += 1;
        let tracked = t.tracked;
        if !tracked {
            self.untracked_nodes += 1;
        }
        if let Some(n) = self.node_mut(id) {
            n.tracked = tracked;
        }
    }

    fn untrack_page(&mut self, gpa: u64, node_tracked: bool) {
        if !node_tracked {
            self.untracked_nodes = self.untracked_nodes.saturating_sub(1);
        }
        let Some(t) = self.pages.get_mut(&gpa) else { return };
        t.nodes = t.nodes.saturating_sub(1);
        if t.nodes == 0 {
            let tracked = t.tracked;
            self.pages.remove(&gpa);
            if tracked {
                self.tracker.untrack(GuestAddress(gpa));
            }
        }
    }

    /// Re-reads guest table `id` and re-shadows each entry that changed. The new shadow entry is
    /// in the host table before the old mapping or child table is released.
    fn resync<M, H>(&mut self, mem: &M, host: &mut H, id: u32) -> Result<(), PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let Some((key, ips)) = self.node(id).and_then(|n| Some((n.key?, n.ips))) else { return Ok(()) };
        let mut fresh = std::mem::take(&mut self.buf);
        fresh.resize(ENTRIES, 0);
        read_table(mem, key.gpa, &mut fresh);
        self.stats.revalidations += 1;
        if self.node(id).is_some_and(|n| n.guest[..] == fresh[..]) {
            self.buf = fresh; // unchanged: the common case, one comparison
            return Ok(());
        }
        let step = if ips { 16 } else { 1 };
        let mut result = Ok(());
        for (i, &new) in fresh.iter().enumerate().step_by(step) {
            let Some(old_e) = self.node(id).and_then(|n| n.guest.get(i).copied()) else { break };
            if new == old_e {
                continue;
            }
            let olds: Vec<Old> = (i..i + step).filter_map(|j| self.take_entry(id, j)).collect();
            let r = self.set_entry(mem, host, id, i, new);
            let recorded = if r.is_ok() { new } else { 0 }; // retried at the next sync
            if let Some(g) = self.node_mut(id).and_then(|n| n.guest.get_mut(i)) {
                *g = recorded;
            }
            self.write_range(host, id, i, i + step);
            for old in olds {
                self.release(host, old);
            }
            self.stats.updated_entries += 1;
            if let Err(e) = r {
                if let Some(n) = self.node_mut(id) {
                    if !n.dirty {
                        n.dirty = true;
                        self.dirty.push(id);
                    }
                }
                result = Err(e);
                break;
            }
        }
        self.buf = fresh;
        result
    }

    /// Re-syncs the tables the tracker reported written.
    pub(super) fn sync_dirty<M, H>(&mut self, mem: &M, host: &mut H) -> Result<(), PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let mut drained = std::mem::take(&mut self.drained);
        self.tracker.drain_writes(&mut drained);
        for gpa in drained.drain(..) {
            self.page_written(gpa);
        }
        self.drained = drained;
        while let Some(id) = self.dirty.pop() {
            let was_dirty = self.node_mut(id).map(|n| std::mem::take(&mut n.dirty)).unwrap_or(false);
            if was_dirty {
                self.resync(mem, host, id)?;
            }
        }
        Ok(())
    }

    /// Re-validates every untracked guest table reachable from `top` (once per pin). Tables built
    /// in this pin are current but are walked through: they may share older tables below them.
    pub(super) fn revalidate_from<M, H>(&mut self, mem: &M, host: &mut H, top: &[u32; 4]) -> Result<(), PpgttError>
    where
        M: GuestMemory + ?Sized,
        H: DmaMapper + ShadowMemory + ?Sized,
    {
        let epoch = self.epoch;
        let mut stack = Vec::new();
        for id in top.iter().filter_map(|t| t.checked_sub(1)) {
            if let Some(n) = self.node_mut(id) {
                if n.visited != epoch {
                    n.visited = epoch;
                    stack.push(id);
                }
            }
        }
        while let Some(id) = stack.pop() {
            let Some(n) = self.node(id) else { continue };
            if !n.tracked && n.created != epoch {
                self.resync(mem, host, id)?;
            }
            let Some(n) = self.node(id) else { continue };
            let kids: Vec<u32> = n.kids.iter().filter_map(|k| k.checked_sub(1)).collect();
            for kid in kids {
                if let Some(k) = self.node_mut(kid) {
                    if k.visited != epoch && k.key.is_some() {
                        k.visited = epoch;
                        stack.push(kid);
                    }
                }
            }
        }
        Ok(())
    }
}
