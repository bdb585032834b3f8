//! The guest's logical ring context (LRC) image: where its fields are, and reading the ones a
//! workload needs (ring registers, page-table roots, workaround batches) through the vGPU's GGTT.
//!
//! Layout (Gen8/Gen9): page 0 of the image is the per-process status page, page 1 the register
//! state, an MI_LOAD_REGISTER_IMM list whose value dwords sit at fixed indices.

use vm_memory::{Bytes, GuestMemory};

use crate::cmd::{AddrSpace, GmTranslate, GmWindows, RingSpec, PAGE_SIZE};
use crate::hw::{Engine, Gen};

pub(crate) use crate::hw::lrc::has_wa_fields;
pub use crate::hw::lrc::{context_size, idx};

/// Errors reading a guest context.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// A page of the image is not mapped in the vGPU's GGTT.
    #[error("context page at ggtt {0:#x} is not mapped")]
    Unmapped(u64),
    /// A mapped page is not guest memory.
    #[error("context page at guest address {0:#x} is not guest memory")]
    BadGuestMemory(u64),
    /// The ring registers in the image are inconsistent.
    #[error("ring registers: {0}")]
    BadRing(&'static str),
    /// A workaround batch pointer is outside the vGPU's graphics memory.
    #[error("{what} at {addr:#x}+{size:#x} is outside the vGPU's graphics memory")]
    OutsideWindows {
        /// Which pointer.
        what: &'static str,
        /// Its address.
        addr: u64,
        /// Its size.
        size: u64,
    },
}

/// The ring registers of a context, as its image holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRegs {
    /// The ring to scan: start, size, head and tail offsets.
    pub ring: RingSpec,
    /// RING_HEAD's wrap count (bits 31:21), kept for write-back.
    pub head_wrap: u32,
    /// RING_CTL as written (enable bit and flags).
    pub ctl: u32,
}

/// What a workload needs from the guest's ring context, read once when the context is submitted:
/// the ring and workaround batches are scanned from these values, and the shadow context takes
/// them from here, never from a later read. (CONTEXT_CONTROL and the engine context are read when
/// the engine would load them; see [`ShadowContext::populate`](super::ShadowContext::populate).)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestContext {
    /// GGTT address of the image.
    pub lrca: u64,
    /// Its ring.
    pub ring: RingRegs,
    /// Page-directory pointers 0..3 (PDP0 holds the PML4 in 4-level mode).
    pub pdps: [u64; 4],
    /// Indirect-context workaround batch: GGTT address and size in bytes (RCS), if any.
    pub indirect_ctx: Option<(u64, u64)>,
    /// INDIRECT_CTX_OFFSET as the image holds it (where in the restore the indirect context runs).
    pub indirect_ctx_offset: u32,
    /// Per-context workaround batch GGTT address (RCS), if valid.
    pub bb_per_ctx: Option<u64>,
    /// The flag bits (11:0) of BB_PER_CTX_PTR (bit 0: valid).
    pub bb_per_ctx_flags: u32,
}

/// Reads the register-state page of the context at GGTT `lrca` and validates what a workload
/// needs from it.
pub fn read_guest_context<M, T>(
    mem: &M,
    xlate: &T,
    windows: &GmWindows,
    engine: Engine,
    gen: Gen,
    lrca: u64,
) -> Result<GuestContext, ContextError>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
{
    let page = lrca.checked_add(PAGE_SIZE).ok_or(ContextError::Unmapped(lrca))?;
    let gpa = xlate.translate(AddrSpace::Ggtt, page).ok_or(ContextError::Unmapped(page))?;
    let mut regs = [0u32; 0x40];
    mem.read_slice(zerocopy::IntoBytes::as_mut_bytes(&mut regs[..]), gpa)
        .map_err(|_| ContextError::BadGuestMemory(gpa.0))?;
    let reg = |i: usize| regs.get(i).copied().map_or(0, u32::from_le);

    let start = u64::from(reg(idx::RING_START) & 0xffff_f000);
    let ctl = reg(idx::RING_CTL);
    let size = (((ctl >> 12) & 0x1ff) + 1) * PAGE_SIZE as u32;
    let head_reg = reg(idx::RING_HEAD);
    let ring = RingSpec { start, size, head: head_reg & 0x001f_fffc, tail: reg(idx::RING_TAIL) & 0x001f_fff8 };
    if ring.head >= size || ring.tail >= size {
        return Err(ContextError::BadRing("head or tail beyond the ring"));
    }
    if !windows.contains(start, u64::from(size)) {
        return Err(ContextError::OutsideWindows { what: "ring buffer", addr: start, size: u64::from(size) });
    }
    let mut pdps = [0u64; 4];
    for (n, p) in pdps.iter_mut().enumerate() {
        let udw = idx::PDP3_UDW + 4 * (3 - n);
        *p = u64::from(reg(udw)) << 32 | u64::from(reg(udw + 2));
    }
    let wa_batches = has_wa_fields(gen, engine);
    let indirect = reg(idx::INDIRECT_CTX);
    let indirect_ctx = match (wa_batches, u64::from(indirect & 0xffff_ffc0), u64::from(indirect & 0x3f) * 64) {
        (true, addr, size) if size > 0 => {
            if !windows.contains(addr, size) {
                return Err(ContextError::OutsideWindows { what: "indirect context batch", addr, size });
            }
            Some((addr, size))
        }
        _ => None,
    };
    let per_ctx = reg(idx::BB_PER_CTX_PTR);
    let bb_per_ctx = match (wa_batches, per_ctx & 1 != 0, u64::from(per_ctx & 0xffff_f000)) {
        (true, true, addr) => {
            if !windows.contains(addr, 4) {
                return Err(ContextError::OutsideWindows { what: "per-context batch", addr, size: 4 });
            }
            Some(addr)
        }
        _ => None,
    };
    Ok(GuestContext {
        lrca,
        ring: RingRegs { ring, head_wrap: head_reg >> 21, ctl },
        pdps,
        indirect_ctx,
        indirect_ctx_offset: reg(idx::INDIRECT_CTX_OFFSET),
        bb_per_ctx,
        bb_per_ctx_flags: per_ctx & 0xfff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{GmRange, LinearTranslation};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const LRCA: u64 = 0x10_4000;

    fn windows() -> GmWindows {
        GmWindows { aperture: GmRange::new(0x10_0000, 0x10_0000), hidden: GmRange::new(0x100_0000, 0x10_0000) }
    }

    fn image(set: &[(usize, u32)]) -> (GuestMemoryMmap<()>, LinearTranslation) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut t = LinearTranslation::new();
        t.map(AddrSpace::Ggtt, GmRange::new(0x10_0000, 0x10_0000), GuestAddress(0));
        for &(i, v) in set {
            mem.write_obj(v, GuestAddress(LRCA - 0x10_0000 + PAGE_SIZE + 4 * i as u64)).unwrap();
        }
        (mem, t)
    }

    fn ring_regs() -> Vec<(usize, u32)> {
        vec![
            (idx::RING_START, 0x10_8000),
            (idx::RING_CTL, 3 << 12 | 1),
            (idx::RING_HEAD, 5 << 21 | 0x40),
            (idx::RING_TAIL, 0x80),
            (idx::CONTEXT_CONTROL, 0x0009_0009),
            (idx::PDP3_UDW + 12, 0x0),
            (idx::PDP3_UDW + 14, 0x1234_5000),
        ]
    }

    #[test]
    fn reads_the_ring_and_roots() {
        let (mem, t) = image(&ring_regs());
        let c = read_guest_context(&mem, &t, &windows(), Engine::Bcs, Gen::Gen8, LRCA).unwrap();
        assert_eq!(c.ring.ring, RingSpec { start: 0x10_8000, size: 0x4000, head: 0x40, tail: 0x80 });
        assert_eq!(c.ring.head_wrap, 5);
        assert_eq!(c.pdps[0], 0x1234_5000);
        assert_eq!(c.indirect_ctx, None);
    }

    #[test]
    fn rejects_rings_outside_the_vgpu() {
        let mut r = ring_regs();
        r[0] = (idx::RING_START, 0x1000);
        let (mem, t) = image(&r);
        assert!(matches!(
            read_guest_context(&mem, &t, &windows(), Engine::Rcs, Gen::Gen9, LRCA),
            Err(ContextError::OutsideWindows { .. })
        ));
        let mut r = ring_regs();
        r[3] = (idx::RING_TAIL, 0x5000);
        let (mem, t) = image(&r);
        assert_eq!(
            read_guest_context(&mem, &t, &windows(), Engine::Rcs, Gen::Gen9, LRCA),
            Err(ContextError::BadRing("head or tail beyond the ring"))
        );
        let (mem, t) = image(&ring_regs());
        assert_eq!(
            read_guest_context(&mem, &t, &windows(), Engine::Rcs, Gen::Gen9, 0x5_0000),
            Err(ContextError::Unmapped(0x5_1000))
        );
    }

    #[test]
    fn workaround_batches_on_render() {
        let mut r = ring_regs();
        r.push((idx::INDIRECT_CTX, 0x10_c000 | 3));
        r.push((idx::BB_PER_CTX_PTR, 0x10_d000 | 1));
        let (mem, t) = image(&r);
        let c = read_guest_context(&mem, &t, &windows(), Engine::Rcs, Gen::Gen9, LRCA).unwrap();
        assert_eq!(c.indirect_ctx, Some((0x10_c000, 192)));
        assert_eq!(c.bb_per_ctx, Some(0x10_d000));
        // Gen8 non-render contexts have no workaround batches.
        let c = read_guest_context(&mem, &t, &windows(), Engine::Vcs, Gen::Gen8, LRCA).unwrap();
        assert_eq!((c.indirect_ctx, c.bb_per_ctx), (None, None));
        let mut r = ring_regs();
        r.push((idx::INDIRECT_CTX, 0x4000 | 3));
        let (mem, t) = image(&r);
        assert!(read_guest_context(&mem, &t, &windows(), Engine::Rcs, Gen::Gen9, LRCA).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(context_size(Gen::Gen9, Engine::Rcs), 22 * 4096);
        assert_eq!(context_size(Gen::Gen8, Engine::Rcs), 20 * 4096);
        assert_eq!(context_size(Gen::Gen9, Engine::Vecs), 2 * 4096);
    }
}
