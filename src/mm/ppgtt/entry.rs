//! Gen8/Gen9 PPGTT entry layout, page-table levels and the two kinds of root.

/// Present bit (all levels).
pub const PRESENT: u64 = 1 << 0;
/// Writable bit.
pub const RW: u64 = 1 << 1;
/// Page-size bit in a PDP entry (1 GiB page) or a PD entry (2 MiB page).
pub const PS: u64 = 1 << 7;
/// In a PD entry: the page table it points to holds 64 KiB pages (Gen9 "IPS").
pub const IPS_64K: u64 = 1 << 11;
/// PAT bit of a 2 MiB or 1 GiB entry (bit 7 in a 4 KiB entry).
pub const LARGE_PAT: u64 = 1 << 12;
/// Address bits of an entry (45:12).
pub const ADDR_MASK: u64 = 0x0000_3fff_ffff_f000;
/// Flag bits the shadow copies from a guest entry.
pub const FLAG_MASK: u64 = 0xfff;
/// Entries per table.
pub const ENTRIES: usize = 512;

/// A page-table level: 1 is a page table (PT), 2 a page directory (PD), 3 a page-directory-pointer
/// table (PDP), 4 the PML4.
pub type Level = u8;

/// Bytes one entry of a table at `level` maps.
pub const fn span(level: Level) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

/// Index into a table at `level` for graphics address `gma`.
pub const fn index(level: Level, gma: u64) -> usize {
    ((gma >> (12 + 9 * (level as u32 - 1))) & 0x1ff) as usize
}

/// Address mask of a leaf entry at `level` (4 KiB, 2 MiB, 1 GiB page).
pub const fn leaf_addr_mask(level: Level) -> u64 {
    ADDR_MASK & !(span(level) - 1)
}

/// True if the entry at `level` maps a page rather than pointing to a table.
pub const fn is_leaf(level: Level, entry: u64) -> bool {
    level == 1 || ((level == 2 || level == 3) && entry & PS != 0)
}

/// Flags of a large (2 MiB/1 GiB) entry as a 4 KiB entry: PS cleared, PAT moved from bit 12 to 7.
pub const fn large_flags_to_small(entry: u64) -> u64 {
    let f = entry & FLAG_MASK & !PS & !IPS_64K;
    if entry & LARGE_PAT != 0 {
        f | PS // bit 7 is PAT in a 4 KiB entry
    } else {
        f
    }
}

/// A guest's PPGTT root, as the context image or a PVINFO notification gives it. Guests write
/// the PDP registers without the present bit, so a root pointer is "present" when non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PpgttRoot {
    /// 4-level: the guest physical address of the PML4 (context PDP0).
    L4(u64),
    /// Legacy 3-level (32-bit): four page directories (context PDP0..PDP3); 0 means absent.
    L3([u64; 4]),
}

impl PpgttRoot {
    /// The root with its table addresses page-aligned (the low bits are ignored by hardware).
    pub fn normalized(self) -> Self {
        match self {
            PpgttRoot::L4(a) => PpgttRoot::L4(a & ADDR_MASK),
            PpgttRoot::L3(p) => PpgttRoot::L3(p.map(|a| a & ADDR_MASK)),
        }
    }
}

/// The shadow root a shadow context loads into its PDP registers: host addresses of shadow tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowRoot {
    /// The shadow PML4.
    L4(u64),
    /// The four shadow page directories (a scratch directory where the guest had none).
    L3([u64; 4]),
}

impl ShadowRoot {
    /// The four PDP register values, PDP0 first (4-level: PDP0 holds the PML4, the rest 0).
    pub fn pdps(&self) -> [u64; 4] {
        match *self {
            ShadowRoot::L4(a) => [a, 0, 0, 0],
            ShadowRoot::L3(p) => p,
        }
    }
}

/// Walks shadow tables from `root` to the host address of `gma`, reading entry `i` of the table
/// at host address `table` with `entry`. `None` if an entry on the way is not present or `gma` is
/// outside the root's range. 64 KiB page tables (IPS) use every 16th entry, as the hardware does.
pub fn walk_tables(root: ShadowRoot, gma: u64, mut entry: impl FnMut(u64, usize) -> Option<u64>) -> Option<u64> {
    let (mut table, mut level) = match root {
        ShadowRoot::L4(t) if gma >> 48 == 0 => (t, 4u8),
        ShadowRoot::L3(p) if gma >> 32 == 0 => (*p.get(index(3, gma) & 3)?, 2u8),
        _ => return None,
    };
    let mut ips = false;
    loop {
        let i = if level == 1 && ips { index(1, gma) & !15 } else { index(level, gma) };
        let e = entry(table & ADDR_MASK, i)?;
        if e & PRESENT == 0 {
            return None;
        }
        if level == 1 {
            let (mask, off) = if ips { (ADDR_MASK & !0xffff, 0xffff) } else { (ADDR_MASK, 0xfff) };
            return Some((e & mask) | (gma & off));
        }
        if (level == 2 || level == 3) && e & PS != 0 {
            return Some((e & leaf_addr_mask(level)) | (gma & (span(level) - 1)));
        }
        ips = level == 2 && e & IPS_64K != 0;
        table = e & ADDR_MASK;
        level -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        assert_eq!(span(1), 4096);
        assert_eq!(span(2), 2 << 20);
        assert_eq!(span(3), 1 << 30);
        assert_eq!(span(4), 512 << 30);
        let gma = (3u64 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123;
        assert_eq!((index(4, gma), index(3, gma), index(2, gma), index(1, gma)), (3, 5, 7, 9));
        assert_eq!(leaf_addr_mask(2), 0x0000_3fff_ffe0_0000);
        assert!(is_leaf(1, 0) && is_leaf(2, PS) && is_leaf(3, PS) && !is_leaf(4, PS) && !is_leaf(2, 0));
        assert_eq!(large_flags_to_small(PS | LARGE_PAT | RW | PRESENT), PS | RW | PRESENT);
        assert_eq!(large_flags_to_small(PS | RW | PRESENT | IPS_64K), RW | PRESENT);
        assert_eq!(ShadowRoot::L4(0x5000).pdps(), [0x5000, 0, 0, 0]);
        assert_eq!(PpgttRoot::L3([0x1007, 0, 0, 0]).normalized(), PpgttRoot::L3([0x1000, 0, 0, 0]));
    }
}
