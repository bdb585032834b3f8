//! An in-memory host for the shadow PPGTT: tables in a map, guest pages "mapped" at a fixed
//! offset, and a walker that resolves an address the way the GPU walks the shadow tables. Used
//! by doc examples, tests, benchmarks and fuzzing; the software GPU has its own host memory.

use std::collections::HashMap;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::entry::{self, ADDR_MASK, ENTRIES, IPS_64K, PRESENT};
use super::{PpgttRoot, ShadowMemory, ShadowRoot};
use crate::mm::DmaMapper;

/// Where guest page `gpa` appears to the GPU: `gpa + HOST_OFFSET`.
pub const HOST_OFFSET: u64 = 1 << 40;
/// Shadow tables are allocated from here up.
pub const TABLE_BASE: u64 = 1 << 44;

/// Shadow tables and guest-page mappings held in process memory.
#[derive(Debug, Default)]
pub struct HostTables {
    tables: HashMap<u64, Box<[u64; ENTRIES]>>,
    free: Vec<u64>,
    next: u64,
    /// Live mappings: (host address, length) -> count.
    mappings: HashMap<(u64, u64), u32>,
    /// Map 2 MiB and 1 GiB pages contiguously (as an IOMMU with huge pages would).
    pub contiguous: bool,
    /// Fail every allocation after this many (to exercise error paths); `None` never fails.
    pub alloc_budget: Option<usize>,
}

impl HostTables {
    /// The host address the GPU uses for guest address `gpa`.
    pub const fn host_of(gpa: u64) -> u64 {
        gpa + HOST_OFFSET
    }

    /// Tables allocated and not freed.
    pub fn live_tables(&self) -> usize {
        self.tables.len()
    }

    /// Mappings made and not undone (a 2 MiB range counts once).
    pub fn live_mappings(&self) -> usize {
        self.mappings.values().map(|&n| n as usize).sum()
    }

    /// Entry `i` of table `table`, if the table exists.
    pub fn entry(&self, table: u64, i: usize) -> Option<u64> {
        self.tables.get(&table)?.get(i).copied()
    }

    /// Resolves `gma` through the shadow tables as the GPU would: PS in a PDP or PD entry ends the
    /// walk at a 1 GiB or 2 MiB page, IPS in a PD entry makes its page table one of 64 KiB pages.
    /// `None` when an entry is not present or a table pointer names no allocated table (a bug).
    pub fn walk(&self, root: ShadowRoot, gma: u64) -> Option<u64> {
        entry::walk_tables(root, gma, |table, i| self.entry(table, i))
    }

    fn take_budget(&mut self) -> Result<(), String> {
        match self.alloc_budget.as_mut() {
            Some(0) => Err("host out of memory".into()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn add_mapping(&mut self, host: u64, len: u64) {
        *self.mappings.entry((host, len)).or_insert(0) += 1;
    }

    fn drop_mapping(&mut self, host: u64, len: u64) {
        match self.mappings.get_mut(&(host, len)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    self.mappings.remove(&(host, len));
                }
            }
            // An unmap of something never mapped: record it so leak checks fail loudly.
            _ => {
                self.mappings.insert((host ^ 1, len), u32::MAX / 2);
            }
        }
    }
}

impl DmaMapper for HostTables {
    fn map_page(&mut self, gpa: GuestAddress) -> Result<u64, String> {
        self.take_budget()?;
        let h = Self::host_of(gpa.0);
        self.add_mapping(h, 4096);
        Ok(h)
    }

    fn unmap_page(&mut self, host: u64) {
        self.drop_mapping(host, 4096);
    }

    fn map_range(&mut self, gpa: GuestAddress, len: u64) -> Result<Option<u64>, String> {
        if !self.contiguous {
            return Ok(None);
        }
        self.take_budget()?;
        let h = Self::host_of(gpa.0);
        self.add_mapping(h, len);
        Ok(Some(h))
    }

    fn unmap_range(&mut self, host: u64, len: u64) {
        self.drop_mapping(host, len);
    }
}

impl ShadowMemory for HostTables {
    fn alloc_table(&mut self) -> Result<u64, String> {
        self.take_budget()?;
        let addr = match self.free.pop() {
            Some(a) => a,
            None => {
                let a = TABLE_BASE + self.next * 4096;
                self.next += 1;
                a
            }
        };
        self.tables.insert(addr, Box::new([0; ENTRIES]));
        Ok(addr)
    }

    fn free_table(&mut self, table: u64) {
        if self.tables.remove(&table).is_some() {
            self.free.push(table);
        }
    }

    fn write_entries(&mut self, table: u64, first: usize, entries: &[u64]) {
        if let Some(t) = self.tables.get_mut(&table) {
            for (slot, &e) in t.iter_mut().skip(first).zip(entries) {
                *slot = e;
            }
        }
    }
}

/// The reference the shadow must agree with: where a walk of the guest's own tables for `gma`
/// ends, applying the shadow's validation rules (an entry naming memory the guest does not own
/// maps nothing). `Some(gpa)` for a guest page, `None` where the shadow must map scratch.
pub fn guest_walk<M: GuestMemory + ?Sized>(mem: &M, root: PpgttRoot, gma: u64) -> Option<u64> {
    let owns = |a: u64, len: u64| {
        usize::try_from(len).is_ok_and(|n| mem.check_range(GuestAddress(a), n, Permissions::ReadWrite))
    };
    let read = |t: u64, i: usize| mem.read_obj::<u64>(GuestAddress(t + 8 * i as u64)).ok().map(u64::from_le);
    let (mut table, mut level) = match root.normalized() {
        PpgttRoot::L4(a) if gma >> 48 == 0 => (a, 4u8),
        PpgttRoot::L3(p) if gma >> 32 == 0 => (*p.get(entry::index(3, gma) & 3)?, 2),
        _ => return None,
    };
    if table == 0 || !owns(table, 4096) {
        return None;
    }
    let mut ips = false;
    loop {
        let i = entry::index(level, gma);
        let e = read(table, if ips { i & !15 } else { i })?;
        if e & PRESENT == 0 {
            return None;
        }
        if ips {
            let a = e & ADDR_MASK & !0xffff;
            return owns(a, 0x10000).then_some(a | (gma & 0xffff));
        }
        if entry::is_leaf(level, e) {
            let a = e & entry::leaf_addr_mask(level);
            return owns(a, entry::span(level)).then_some(a | (gma & (entry::span(level) - 1)));
        }
        if !owns(e & ADDR_MASK, 4096) {
            return None;
        }
        ips = level == 2 && e & IPS_64K != 0;
        table = e & ADDR_MASK;
        level -= 1;
    }
}
