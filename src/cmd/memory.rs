//! Graphics-memory views the scanner needs: address spaces, the vGPU's GM windows, and translation
//! of graphics addresses to guest physical addresses.

use std::fmt;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Size of a GTT page.
pub const PAGE_SIZE: u64 = 4096;

/// The two graphics address spaces of a Gen8/Gen9 engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrSpace {
    /// The global GTT, shared by the host and every vGPU (each vGPU owns windows of it).
    Ggtt,
    /// The per-process GTT of the context being scanned.
    Ppgtt,
}

impl fmt::Display for AddrSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrSpace::Ggtt => "ggtt",
            AddrSpace::Ppgtt => "ppgtt",
        })
    }
}

/// A range `[base, base + size)` of graphics memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GmRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GmRange {
    /// A range from base and size.
    pub const fn new(base: u64, size: u64) -> Self {
        GmRange { base, size }
    }

    /// One past the last byte, saturating.
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether `[addr, addr + len)` lies entirely inside the range (`len` 0 is treated as 1).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let len = len.max(1);
        match addr.checked_add(len) {
            Some(end) => addr >= self.base && end <= self.end(),
            None => false,
        }
    }
}

/// The graphics-memory windows of the host GGTT that one vGPU owns: its share of the CPU-visible
/// aperture ("low GM") and of the hidden part ("high GM"). With ballooning, guest GGTT addresses
/// are host GGTT addresses, so commands are range-checked against these windows, never rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GmWindows {
    /// Aperture (mappable) window.
    pub aperture: GmRange,
    /// Hidden (non-mappable) window.
    pub hidden: GmRange,
}

impl GmWindows {
    /// Whether `[addr, addr + len)` lies entirely inside one window (never straddling two).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.aperture.contains(addr, len) || self.hidden.contains(addr, len)
    }
}

/// Translates graphics addresses of a vGPU to guest physical addresses.
///
/// `mm` implements this over the vGPU's virtual GGTT and shadow PPGTT; tests and the `scan`
/// command use [`LinearTranslation`]. A translation is valid up to the end of the 4 KiB page that
/// holds `gma`.
pub trait GmTranslate {
    /// Guest physical address of graphics address `gma` in `space`, or `None` if unmapped.
    fn translate(&self, space: AddrSpace, gma: u64) -> Option<GuestAddress>;
}

impl<T: GmTranslate + ?Sized> GmTranslate for &T {
    fn translate(&self, space: AddrSpace, gma: u64) -> Option<GuestAddress> {
        (**self).translate(space, gma)
    }
}

/// GGTT addresses through one translation and PPGTT addresses through another: a vGPU's virtual
/// GGTT beside the shadow PPGTT of the context a workload runs in.
#[derive(Clone, Copy, Debug)]
pub struct SplitTranslation<G, P> {
    /// Translates [`AddrSpace::Ggtt`].
    pub ggtt: G,
    /// Translates [`AddrSpace::Ppgtt`].
    pub ppgtt: P,
}

impl<G: GmTranslate, P: GmTranslate> GmTranslate for SplitTranslation<G, P> {
    fn translate(&self, space: AddrSpace, gma: u64) -> Option<GuestAddress> {
        match space {
            AddrSpace::Ggtt => self.ggtt.translate(space, gma),
            AddrSpace::Ppgtt => self.ppgtt.translate(space, gma),
        }
    }
}

/// A page-table-free translation: a list of linear mappings from graphics ranges to guest physical
/// ranges, per address space. For tests, fuzzing and the `scan` command.
#[derive(Clone, Debug, Default)]
pub struct LinearTranslation {
    maps: Vec<(AddrSpace, GmRange, GuestAddress)>,
}

impl LinearTranslation {
    /// An empty translation (nothing mapped).
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `range` of `space` to guest physical memory starting at `gpa`.
    pub fn map(&mut self, space: AddrSpace, range: GmRange, gpa: GuestAddress) -> &mut Self {
        self.maps.push((space, range, gpa));
        self
    }
}

impl GmTranslate for LinearTranslation {
    fn translate(&self, space: AddrSpace, gma: u64) -> Option<GuestAddress> {
        self.maps
            .iter()
            .find(|(s, r, _)| *s == space && r.contains(gma, 1))
            .and_then(|(_, r, gpa)| gpa.0.checked_add(gma - r.base).map(GuestAddress))
    }
}

/// Why bytes could not be copied out of graphics memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFault {
    /// The graphics address has no translation.
    Unmapped(u64),
    /// The translation points outside guest memory.
    BadGuestAddress(u64),
}

/// Splits `[addr, addr + len)` at page boundaries: each item is the address of a piece and its
/// range of byte offsets from `addr` (addresses wrap around like the engine's adder).
pub fn page_chunks(addr: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = addr.wrapping_add(done as u64);
        let n = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(len - done);
        let r = done..done + n;
        done += n;
        Some((at, r))
    })
}

/// Copies `buf.len()` bytes starting at graphics address `gma` of `space` into `buf`, page by
/// page through `xlate`.
pub fn copy_from_gm<M, T>(mem: &M, xlate: &T, space: AddrSpace, gma: u64, buf: &mut [u8]) -> Result<(), CopyFault>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
{
    let mut done = 0usize;
    let mut addr = gma;
    while done < buf.len() {
        let in_page = (PAGE_SIZE - (addr % PAGE_SIZE)) as usize;
        let n = in_page.min(buf.len() - done);
        let gpa = xlate.translate(space, addr).ok_or(CopyFault::Unmapped(addr))?;
        let dst = buf.get_mut(done..done + n).ok_or(CopyFault::Unmapped(addr))?;
        mem.read_slice(dst, gpa).map_err(|_| CopyFault::BadGuestAddress(gpa.0))?;
        done += n;
        addr = addr.checked_add(n as u64).ok_or(CopyFault::Unmapped(u64::MAX))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn page_chunks_split_at_page_boundaries() {
        let c: Vec<_> = page_chunks(0xff8, 0x1010).collect();
        assert_eq!(c, [(0xff8, 0..8), (0x1000, 8..0x1008), (0x2000, 0x1008..0x1010)]);
        assert_eq!(page_chunks(0, 0).count(), 0);
        assert_eq!(page_chunks(u64::MAX - 3, 8).collect::<Vec<_>>(), [(u64::MAX - 3, 0..4), (0, 4..8)]);
    }

    #[test]
    fn windows_never_straddle() {
        let w = GmWindows { aperture: GmRange::new(0x10_0000, 0x10_0000), hidden: GmRange::new(0x20_0000, 0x10_0000) };
        assert!(w.contains(0x10_0000, 4));
        assert!(w.contains(0x1f_fffc, 4));
        // Crosses from the aperture window into the adjacent hidden window: rejected.
        assert!(!w.contains(0x1f_fffc, 8));
        assert!(!w.contains(0x0f_fffc, 4));
        assert!(!w.contains(u64::MAX - 2, 8));
        assert!(w.contains(0x2f_ffff, 0));
    }

    #[test]
    fn copy_crosses_discontiguous_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x2ffe)).unwrap();
        mem.write_slice(&[5, 6], GuestAddress(0x1000)).unwrap();
        let mut t = LinearTranslation::new();
        t.map(AddrSpace::Ggtt, GmRange::new(0x8000, 0x1000), GuestAddress(0x2000));
        t.map(AddrSpace::Ggtt, GmRange::new(0x9000, 0x1000), GuestAddress(0x1000));
        let mut buf = [0u8; 4];
        copy_from_gm(&mem, &t, AddrSpace::Ggtt, 0x8ffe, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 5, 6]);
        assert_eq!(copy_from_gm(&mem, &t, AddrSpace::Ppgtt, 0x8ffe, &mut buf), Err(CopyFault::Unmapped(0x8ffe)));
        let mut big = [0u8; 8];
        assert_eq!(copy_from_gm(&mem, &t, AddrSpace::Ggtt, 0x9ffc, &mut big), Err(CopyFault::Unmapped(0xa000)));
    }
}
