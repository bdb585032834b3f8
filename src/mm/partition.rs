//! The GM partition: a physical GPU's GGTT split into the host's reserve and, per vGPU, one window
//! of the CPU-visible aperture ("low GM"), one window of the hidden part ("high GM") and a number of
//! fence registers, as GVT-g does with ballooning. Guests learn their windows through PVINFO and use
//! host graphics addresses directly, so a window is contiguous and never moves while the vGPU lives.

use std::collections::BTreeMap;
use std::fmt;

use crate::cmd::{GmRange, GmWindows, PAGE_SIZE};

/// Fence registers of a Gen8/Gen9 GPU.
pub const MAX_FENCES: u32 = 32;

const MIB: u64 = 1 << 20;

/// Errors of the GM partition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// Not enough contiguous aperture (low GM) for the request.
    #[error("aperture exhausted: {} asked, {} free", Size(*asked), Size(*free))]
    ApertureExhausted {
        /// Bytes asked for.
        asked: u64,
        /// Largest contiguous free range.
        free: u64,
    },
    /// Not enough contiguous hidden GM (high GM) for the request.
    #[error("hidden graphics memory exhausted: {} asked, {} free", Size(*asked), Size(*free))]
    HiddenExhausted {
        /// Bytes asked for.
        asked: u64,
        /// Largest contiguous free range.
        free: u64,
    },
    /// Not enough fence registers.
    #[error("fence registers exhausted: {asked} asked, {free} free")]
    FencesExhausted {
        /// Fences asked for.
        asked: u32,
        /// Fences free.
        free: u32,
    },
    /// A size that is zero or not a multiple of 4 KiB.
    #[error("{what} of {size:#x} bytes is not a non-zero multiple of 4 KiB")]
    BadSize {
        /// Which size.
        what: &'static str,
        /// The size.
        size: u64,
    },
    /// The GPU's layout cannot hold the host's reserve.
    #[error("layout {0}")]
    BadLayout(&'static str),
    /// An allocation that this allocator did not hand out (or already took back).
    #[error("allocation not owned by this partition")]
    NotAllocated,
}

/// Prints sizes as a person reads them (128 MiB, 4 KiB).
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v >= MIB && v % MIB == 0 {
            write!(f, "{} MiB", v / MIB)
        } else if v >= 1024 && v % 1024 == 0 {
            write!(f, "{} KiB", v / 1024)
        } else {
            write!(f, "{v} bytes")
        }
    }
}

/// A physical GPU's graphics memory: the GGTT's size and how much of it the aperture covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmLayout {
    /// Bytes of GGTT address space behind the CPU-visible aperture (BAR2), from 0.
    pub aperture: u64,
    /// Total bytes of GGTT address space (2, 4 or 8 MiB of PTEs: 1, 2 or 4 GiB).
    pub total: u64,
    /// Fence registers.
    pub fences: u32,
}

impl GmLayout {
    /// The common desktop layout: 256 MiB aperture, 4 GiB GGTT, 32 fences.
    pub const DESKTOP: GmLayout = GmLayout { aperture: 256 * MIB, total: 4096 * MIB, fences: MAX_FENCES };
}

/// What the host keeps for itself, from the start of each part (as GVT-g: 128 MiB of aperture,
/// 384 MiB of hidden GM, 4 fences).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostReserve {
    /// Aperture bytes.
    pub aperture: u64,
    /// Hidden bytes.
    pub hidden: u64,
    /// Fence registers.
    pub fences: u32,
}

impl Default for HostReserve {
    fn default() -> Self {
        HostReserve { aperture: 128 * MIB, hidden: 384 * MIB, fences: 4 }
    }
}

/// What one vGPU asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmRequest {
    /// Aperture bytes (multiple of 4 KiB).
    pub aperture: u64,
    /// Hidden bytes (multiple of 4 KiB).
    pub hidden: u64,
    /// Fence registers.
    pub fences: u32,
}

/// What one vGPU got: its two windows and the host fence registers behind its guest fences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GmAllocation {
    /// The windows (guest graphics addresses are these host addresses).
    pub windows: GmWindows,
    /// Host fence register numbers, guest fence `i` being `fences[i]`.
    pub fences: Vec<u8>,
}

/// Free ranges of one part, coalesced: base -> size.
#[derive(Clone, Debug)]
struct FreeList(BTreeMap<u64, u64>);

impl FreeList {
    fn new(range: GmRange) -> Self {
        let mut m = BTreeMap::new();
        if range.size > 0 {
            m.insert(range.base, range.size);
        }
        FreeList(m)
    }

    fn largest(&self) -> u64 {
        self.0.values().copied().max().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// First fit.
    fn take(&mut self, size: u64) -> Option<u64> {
        let (&base, &len) = self.0.iter().find(|(_, &len)| len >= size)?;
        self.0.remove(&base);
        if len > size {
            self.0.insert(base + size, len - size);
        }
        Some(base)
    }

    /// Whether `[base, base + size)` overlaps a free range.
    fn overlaps(&self, base: u64, size: u64) -> bool {
        let end = base + size;
        let prev = self.0.range(..=base).next_back();
        let next = self.0.range(base..).next();
        prev.is_some_and(|(&b, &l)| b + l > base) || next.is_some_and(|(&b, _)| b < end)
    }

    /// Returns a range that does not overlap a free one, merging it with its neighbours.
    fn give(&mut self, base: u64, size: u64) {
        let end = base + size;
        let (mut start, mut stop) = (base, end);
        if let Some((&b, &l)) = self.0.range(..base).next_back().filter(|(&b, &l)| b + l == base) {
            self.0.remove(&b);
            start = b;
            stop = stop.max(b + l);
        }
        if let Some((&b, &l)) = self.0.range(end..).next().filter(|(&b, _)| b == end) {
            self.0.remove(&b);
            stop = b + l;
        }
        self.0.insert(start, stop - start);
    }
}

/// The partition of one physical GPU's graphics memory between the host and its vGPUs.
///
/// ```
/// use shadowgpu::mm::{GmAllocator, GmLayout, GmRequest, HostReserve};
///
/// let mut gm = GmAllocator::new(GmLayout::DESKTOP, HostReserve::default()).unwrap();
/// let a = gm.allocate(GmRequest { aperture: 64 << 20, hidden: 384 << 20, fences: 4 }).unwrap();
/// assert!(a.windows.aperture.base >= 128 << 20); // above the host's reserve
/// let err = gm.allocate(GmRequest { aperture: 128 << 20, hidden: 384 << 20, fences: 4 }).unwrap_err();
/// assert_eq!(err.to_string(), "aperture exhausted: 128 MiB asked, 64 MiB free");
/// gm.release(&a).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct GmAllocator {
    layout: GmLayout,
    /// The aperture part vGPUs share (after the host's reserve).
    low_part: GmRange,
    /// The hidden part vGPUs share.
    high_part: GmRange,
    low: FreeList,
    high: FreeList,
    /// Bit i set: host fence i is free.
    fences: u32,
    /// Bit i set: host fence i is the host's.
    host_fences: u32,
}

impl GmAllocator {
    /// A partition of `layout` with `reserve` kept for the host.
    pub fn new(layout: GmLayout, reserve: HostReserve) -> Result<Self, PartitionError> {
        let aligned = |v: u64| v % PAGE_SIZE == 0;
        if !(aligned(layout.aperture) && aligned(layout.total) && aligned(reserve.aperture) && aligned(reserve.hidden))
        {
            return Err(PartitionError::BadLayout("sizes must be multiples of 4 KiB"));
        }
        if layout.aperture > layout.total || layout.fences > MAX_FENCES {
            return Err(PartitionError::BadLayout("aperture larger than the GGTT, or more than 32 fences"));
        }
        if reserve.aperture > layout.aperture
            || reserve.hidden > layout.total - layout.aperture
            || reserve.fences > layout.fences
        {
            return Err(PartitionError::BadLayout("host reserve larger than the GPU"));
        }
        let low = GmRange::new(reserve.aperture, layout.aperture - reserve.aperture);
        let hidden_base = layout.aperture + reserve.hidden;
        let high = GmRange::new(hidden_base, layout.total - hidden_base);
        let all: u32 = if layout.fences == 32 { u32::MAX } else { (1u32 << layout.fences) - 1 };
        let host: u32 = if reserve.fences == 32 { u32::MAX } else { (1u32 << reserve.fences) - 1 };
        Ok(GmAllocator {
            layout,
            low_part: low,
            high_part: high,
            low: FreeList::new(low),
            high: FreeList::new(high),
            fences: all & !host,
            host_fences: host,
        })
    }

    /// The GPU's layout.
    pub fn layout(&self) -> GmLayout {
        self.layout
    }

    /// Free aperture, hidden bytes and fences (totals, not necessarily contiguous).
    pub fn free(&self) -> (u64, u64, u32) {
        (self.low.total(), self.high.total(), self.fences.count_ones())
    }

    /// Allocates windows and fences for one vGPU, all or nothing.
    pub fn allocate(&mut self, req: GmRequest) -> Result<GmAllocation, PartitionError> {
        for (what, size) in [("aperture", req.aperture), ("hidden size", req.hidden)] {
            if size == 0 || size % PAGE_SIZE != 0 {
                return Err(PartitionError::BadSize { what, size });
            }
        }
        let free_fences = self.fences.count_ones();
        if req.fences > free_fences {
            return Err(PartitionError::FencesExhausted { asked: req.fences, free: free_fences });
        }
        if self.low.largest() < req.aperture {
            return Err(PartitionError::ApertureExhausted { asked: req.aperture, free: self.low.largest() });
        }
        if self.high.largest() < req.hidden {
            return Err(PartitionError::HiddenExhausted { asked: req.hidden, free: self.high.largest() });
        }
        // Both checks passed, so both takes succeed; the fallbacks keep this total.
        let a =
            self.low.take(req.aperture).ok_or(PartitionError::ApertureExhausted { asked: req.aperture, free: 0 })?;
        let Some(h) = self.high.take(req.hidden) else {
            self.low.give(a, req.aperture);
            return Err(PartitionError::HiddenExhausted { asked: req.hidden, free: 0 });
        };
        let mut fences = Vec::with_capacity(req.fences as usize);
        for i in 0..MAX_FENCES {
            if fences.len() == req.fences as usize {
                break;
            }
            if self.fences & (1 << i) != 0 {
                self.fences &= !(1 << i);
                fences.push(i as u8);
            }
        }
        Ok(GmAllocation {
            windows: GmWindows { aperture: GmRange::new(a, req.aperture), hidden: GmRange::new(h, req.hidden) },
            fences,
        })
    }

    /// Returns a vGPU's windows and fences. An allocation this partition does not hold (never
    /// handed out, or already returned) is refused and changes nothing.
    pub fn release(&mut self, a: &GmAllocation) -> Result<(), PartitionError> {
        let fence_bits = a.fences.iter().try_fold(0u32, |acc, &f| {
            let bit = 1u32.checked_shl(u32::from(f)).filter(|b| acc & b == 0 && self.fences & b == 0)?;
            Some(acc | bit)
        });
        let Some(fence_bits) = fence_bits.filter(|&b| b & self.host_fences == 0) else {
            return Err(PartitionError::NotAllocated);
        };
        let (ap, hi) = (a.windows.aperture, a.windows.hidden);
        let owned = |r: GmRange, part: GmRange, free: &FreeList| {
            r.size > 0 && r.base >= part.base && r.end() <= part.end() && !free.overlaps(r.base, r.size)
        };
        if !owned(ap, self.low_part, &self.low) || !owned(hi, self.high_part, &self.high) {
            return Err(PartitionError::NotAllocated);
        }
        self.low.give(ap.base, ap.size);
        self.high.give(hi.base, hi.size);
        self.fences |= fence_bits;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gm() -> GmAllocator {
        GmAllocator::new(GmLayout::DESKTOP, HostReserve::default()).unwrap()
    }

    const fn req(ap_mib: u64, hi_mib: u64, fences: u32) -> GmRequest {
        GmRequest { aperture: ap_mib * MIB, hidden: hi_mib * MIB, fences }
    }

    #[test]
    fn windows_avoid_the_host_reserve() {
        let mut g = gm();
        let a = g.allocate(req(64, 384, 4)).unwrap();
        assert_eq!(a.windows.aperture, GmRange::new(128 * MIB, 64 * MIB));
        assert_eq!(a.windows.hidden, GmRange::new((256 + 384) * MIB, 384 * MIB));
        assert_eq!(a.fences, vec![4, 5, 6, 7]);
        let b = g.allocate(req(64, 384, 4)).unwrap();
        assert_eq!(b.windows.aperture.base, 192 * MIB);
        assert_eq!(g.free(), (0, (4096 - 256 - 384 - 768) * MIB, 20));
    }

    #[test]
    fn clear_errors_when_resources_run_out() {
        let mut g = gm();
        g.allocate(req(64, 384, 4)).unwrap();
        let e = g.allocate(req(128, 384, 4)).unwrap_err();
        assert_eq!(e.to_string(), "aperture exhausted: 128 MiB asked, 64 MiB free");
        let e = g.allocate(req(32, 4000, 4)).unwrap_err();
        assert!(e.to_string().starts_with("hidden graphics memory exhausted: 4000 MiB asked"), "{e}");
        let e = g.allocate(req(32, 64, 29)).unwrap_err();
        assert_eq!(e, PartitionError::FencesExhausted { asked: 29, free: 24 });
        // A failed request takes nothing.
        assert_eq!(g.free().0, 64 * MIB);
        assert!(matches!(g.allocate(req(0, 64, 0)), Err(PartitionError::BadSize { .. })));
        assert!(matches!(
            g.allocate(GmRequest { aperture: 4097, hidden: 4096, fences: 0 }),
            Err(PartitionError::BadSize { .. })
        ));
    }

    #[test]
    fn release_refuses_what_it_does_not_hold() {
        let mut g = gm();
        let a = g.allocate(req(16, 16, 2)).unwrap();
        g.release(&a).unwrap();
        assert_eq!(g.release(&a), Err(PartitionError::NotAllocated));
        let forged = GmAllocation {
            windows: GmWindows { aperture: GmRange::new(0, 4096), hidden: a.windows.hidden },
            fences: vec![],
        };
        assert_eq!(g.release(&forged), Err(PartitionError::NotAllocated));
        let b = g.allocate(req(16, 16, 2)).unwrap();
        let host_fence = GmAllocation { fences: vec![0], ..b.clone() };
        assert_eq!(g.release(&host_fence), Err(PartitionError::NotAllocated));
        g.release(&b).unwrap();
        assert_eq!(g.free(), gm().free());
    }

    #[test]
    fn bad_layouts() {
        let l = GmLayout::DESKTOP;
        assert!(GmAllocator::new(GmLayout { aperture: 100, ..l }, HostReserve::default()).is_err());
        assert!(GmAllocator::new(GmLayout { aperture: 64 * MIB, ..l }, HostReserve::default()).is_err());
        assert!(GmAllocator::new(GmLayout { fences: 33, ..l }, HostReserve::default()).is_err());
    }

    proptest! {
        /// Any sequence of creates and destroys: allocations never overlap each other or the host's
        /// reserve, stay inside their part, and once all are released the partition is as new.
        #[test]
        fn no_overlap_and_no_leak(ops in prop::collection::vec((any::<bool>(), 1u64..48, 1u64..300, 0u32..5, any::<prop::sample::Index>()), 1..200)) {
            let mut g = gm();
            let fresh = g.free();
            let mut live: Vec<GmAllocation> = Vec::new();
            for (create, ap, hi, fences, pick) in ops {
                if create || live.is_empty() {
                    if let Ok(a) = g.allocate(req(ap, hi, fences)) {
                        prop_assert!(a.windows.aperture.base >= 128 * MIB && a.windows.aperture.end() <= 256 * MIB);
                        prop_assert!(a.windows.hidden.base >= 640 * MIB && a.windows.hidden.end() <= 4096 * MIB);
                        prop_assert!(a.fences.iter().all(|f| (4..32).contains(f)));
                        for b in &live {
                            for (x, y) in [(a.windows.aperture, b.windows.aperture), (a.windows.hidden, b.windows.hidden)] {
                                prop_assert!(x.end() <= y.base || y.end() <= x.base);
                            }
                            prop_assert!(a.fences.iter().all(|f| !b.fences.contains(f)));
                        }
                        live.push(a);
                    }
                } else {
                    let a = live.swap_remove(pick.index(live.len()));
                    prop_assert_eq!(g.release(&a), Ok(()));
                }
            }
            for a in live.drain(..) {
                prop_assert_eq!(g.release(&a), Ok(()));
            }
            prop_assert_eq!(g.free(), fresh);
            prop_assert_eq!(g.low.0.len(), 1);
            prop_assert_eq!(g.high.0.len(), 1);
        }
    }
}
