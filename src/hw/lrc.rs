//! The logical ring context (LRC) image of Gen8/Gen9: page 0 is the per-process status page, page
//! 1 the register-state page, and on the render engine pages 2.. hold the engine's 3D state.
//!
//! The register-state page is a command stream the engine executes when it restores the context:
//! MI_LOAD_REGISTER_IMM lists whose value dwords sit at fixed indices. Its first 0x50 dwords are
//! the *ring context* (ring registers, batch state, workaround-batch pointers, the context
//! timestamp, the page-directory pointers); the rest is the *engine context*. When the engine
//! saves a context it writes these lists, headers included, in the layout below (the layout i915
//! writes into a fresh image before the hardware first saves it: `gen8_xcs_offsets`,
//! `gen9_rcs_offsets`, ... in `intel_lrc.c`). i915 describes no engine context for Gen8; the
//! same list as Gen9's is used there.

use super::{Engine, Gen};

/// Dwords in a page.
pub const PAGE_DWORDS: usize = 1024;

/// Value-dword indices in the register-state page.
pub mod idx {
    /// CONTEXT_CONTROL (masked): bit 0 engine-context restore inhibit, bit 2 engine-context save
    /// inhibit.
    pub const CONTEXT_CONTROL: usize = 0x03;
    /// RING_HEAD (offset bits 20:2, wrap count 31:21).
    pub const RING_HEAD: usize = 0x05;
    /// RING_TAIL.
    pub const RING_TAIL: usize = 0x07;
    /// RING_START.
    pub const RING_START: usize = 0x09;
    /// RING_CTL.
    pub const RING_CTL: usize = 0x0b;
    /// First value dword of the batch state (BB_ADDR_UDW .. second-level BB state); the batch
    /// state runs to [`BATCH_STATE_LAST`] in steps of two.
    pub const BATCH_STATE_FIRST: usize = 0x0d;
    /// Last value dword of the batch state.
    pub const BATCH_STATE_LAST: usize = 0x17;
    /// BB_PER_CTX_PTR (RCS; Gen9 all engines).
    pub const BB_PER_CTX_PTR: usize = 0x19;
    /// INDIRECT_CTX.
    pub const INDIRECT_CTX: usize = 0x1b;
    /// INDIRECT_CTX_OFFSET.
    pub const INDIRECT_CTX_OFFSET: usize = 0x1d;
    /// CTX_TIMESTAMP.
    pub const CTX_TIMESTAMP: usize = 0x23;
    /// PDP3 upper dword; PDPn upper is at `PDP3_UDW + 4 * (3 - n)`, lower two after.
    pub const PDP3_UDW: usize = 0x25;
    /// The blitter's BCS_SWCTRL (tiling control) in its ring context.
    pub const BCS_SWCTRL: usize = 0x43;
}

/// CONTEXT_CONTROL: the engine does not restore the engine context (a fresh context).
pub const CTX_RESTORE_INHIBIT: u32 = 1 << 0;
/// CONTEXT_CONTROL: the engine does not save the engine context.
pub const CTX_SAVE_INHIBIT: u32 = 1 << 2;

/// First dword of the engine context in the register-state page (end of the ring context).
pub const ENGINE_CONTEXT_DWORD: usize = 0x50;

/// MI_LOAD_REGISTER_IMM of `n` registers with Force Posted, as the engine writes it on a save.
pub const fn lri_header(n: usize) -> u32 {
    0x1100_0000 | (1 << 12) | (2 * n as u32 - 1)
}

/// One MI_LOAD_REGISTER_IMM list of the register-state page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LriList {
    /// Dword index of the header in the register-state page; register `k` is at `header + 1 + 2k`
    /// and its value right after it.
    pub header: usize,
    /// The registers, as offsets from the engine's MMIO base.
    pub regs: &'static [u32],
}

impl LriList {
    /// Index of the value dword of register `k`.
    pub const fn value_index(&self, k: usize) -> usize {
        self.header + 2 + 2 * k
    }
}

/// The ring registers (Gen8 render and every Gen9 engine also list the workaround-batch pointers).
const RING_REGS_WA: &[u32] =
    &[0x244, 0x034, 0x030, 0x038, 0x03c, 0x168, 0x140, 0x110, 0x11c, 0x114, 0x118, 0x1c0, 0x1c4, 0x1c8];
/// CTX_TIMESTAMP and the page-directory pointers (PDP3 upper first, down to PDP0 lower).
const TIMESTAMP_PDPS: &[u32] = &[0x3a8, 0x28c, 0x288, 0x284, 0x280, 0x27c, 0x278, 0x274, 0x270];
/// The engine context's register list (`LRI(44)` at dword 0x51 of a Gen9 image): EXCC, MI_MODE,
/// INSTPM, two context-private registers, TIMESTAMP, three more, the batch offset,
/// MI_PREDICATE_RESULT_1, the sixteen 64-bit CS GPRs, IPEHR.
const ENGINE_REGS: &[u32] = &[
    0x028, 0x09c, 0x0c0, 0x178, 0x17c, 0x358, 0x170, 0x150, 0x154, 0x158, 0x41c, 0x600, 0x604, 0x608, 0x60c, 0x610,
    0x614, 0x618, 0x61c, 0x620, 0x624, 0x628, 0x62c, 0x630, 0x634, 0x638, 0x63c, 0x640, 0x644, 0x648, 0x64c, 0x650,
    0x654, 0x658, 0x65c, 0x660, 0x664, 0x668, 0x66c, 0x670, 0x674, 0x678, 0x67c, 0x068,
];

/// The render engine's non-privileged pipeline state (offsets from the render base, 0x2000), which
/// the render context saves as the hardware does (in the 3D state of pages 2..; the software GPU
/// keeps it as a second register-load list at the start of page 2): everything a user batch may write
/// (`hw::nonpriv`: pipeline-statistics counters, MI_PREDICATE, 3DPRIM, GPGPU dispatch, stream-out,
/// cache mode, GT_MODE, L3 configuration, TD_CTL) that the first list does not hold, so a write
/// stays in the context that made it (what IGT's `gem_ctx_isolation` checks).
const RENDER_STATE_GEN8: &[u32] = &[
    0x290, 0x294, 0x2c8, 0x2cc, 0x2d8, 0x2dc, 0x2f0, 0x2f4, 0x2f8, 0x2fc, 0x300, 0x304, 0x308, 0x30c, 0x310, 0x314,
    0x318, 0x31c, 0x320, 0x324, 0x328, 0x32c, 0x330, 0x334, 0x338, 0x33c, 0x340, 0x344, 0x360, 0x364, 0x400, 0x404,
    0x408, 0x40c, 0x410, 0x414, 0x418, 0x420, 0x430, 0x434, 0x438, 0x43c, 0x440, 0x448, 0x44c, 0x450, 0x454, 0x500,
    0x504, 0x508, 0x3200, 0x3204, 0x3208, 0x320c, 0x3210, 0x3214, 0x3218, 0x321c, 0x3240, 0x3244, 0x3248, 0x324c,
    0x3250, 0x3254, 0x3258, 0x325c, 0x3280, 0x3284, 0x3288, 0x328c, 0x5000, 0x5004, 0x5008, 0x5034, 0xc400, 0xc404,
];
/// Gen9 adds CS_DEBUG_MODE2 and the context-saved registers of i915's whitelist (CS_CHICKEN1,
/// COMMON_SLICE_CHICKEN2, HDC_CHICKEN1).
const RENDER_STATE_GEN9: &[u32] = &[
    0x0d8, 0x290, 0x294, 0x2c8, 0x2cc, 0x2d8, 0x2dc, 0x2f0, 0x2f4, 0x2f8, 0x2fc, 0x300, 0x304, 0x308, 0x30c, 0x310,
    0x314, 0x318, 0x31c, 0x320, 0x324, 0x328, 0x32c, 0x330, 0x334, 0x338, 0x33c, 0x340, 0x344, 0x360, 0x364, 0x400,
    0x404, 0x408, 0x40c, 0x410, 0x414, 0x418, 0x420, 0x430, 0x434, 0x438, 0x43c, 0x440, 0x448, 0x44c, 0x450, 0x454,
    0x500, 0x504, 0x508, 0x580, 0x3200, 0x3204, 0x3208, 0x320c, 0x3210, 0x3214, 0x3218, 0x321c, 0x3240, 0x3244, 0x3248,
    0x324c, 0x3250, 0x3254, 0x3258, 0x325c, 0x3280, 0x3284, 0x3288, 0x328c, 0x5000, 0x5004, 0x5008, 0x5014, 0x5034,
    0x5304, 0xc400, 0xc404,
];

/// Dword index of the render state list's header, counted from the register-state page: the
/// first dword of page 2, where the render engine's 3D state starts. Not in the register-state
/// page after the engine list: i915 writes into that page where its Gen8 render layout has
/// registers (MI_MODE at 0x58, the GPRs from 0xd8, ...), which cut a list there (seen: a Gen8
/// guest's image with one register dword zeroed inside it).
const RENDER_STATE_HEADER: usize = PAGE_DWORDS;

/// Whether the ring context of `engine` on `gen` has the workaround-batch fields (indirect
/// context, per-context batch): render on Gen8, every engine on Gen9.
pub const fn has_wa_fields(gen: Gen, engine: Engine) -> bool {
    matches!(engine, Engine::Rcs) || matches!(gen, Gen::Gen9)
}

/// The ring context's register-load lists of `engine` on `gen` (dwords `0..0x50`).
pub fn ring_context_lists(gen: Gen, engine: Engine) -> [LriList; 3] {
    let wa = has_wa_fields(gen, engine);
    let ring = LriList { header: 0x01, regs: if wa { RING_REGS_WA } else { RING_REGS_WA.split_at(11).0 } };
    let roots = LriList { header: 0x21, regs: TIMESTAMP_PDPS };
    let tail = match (gen, engine) {
        // R_PWR_CLK_STATE.
        (_, Engine::Rcs) => LriList { header: 0x41, regs: &[0x0c8] },
        // BCS_SWCTRL (blitter) or its slot, and EXCC.
        (Gen::Gen8, _) => LriList { header: 0x41, regs: &[0x200, 0x028] },
        (Gen::Gen9, _) => LriList { header: 0x41, regs: &[0x200] },
    };
    [ring, roots, tail]
}

/// The engine context's register-load list of `engine` on `gen`, in the register-state page.
pub fn engine_context_list(_gen: Gen, _engine: Engine) -> LriList {
    LriList { header: ENGINE_CONTEXT_DWORD + 1, regs: ENGINE_REGS }
}

/// The render engine's second engine-context list, its non-privileged pipeline state (`None` for
/// the other engines, whose non-privileged registers are all in the first list).
pub fn render_state_list(gen: Gen, engine: Engine) -> Option<LriList> {
    let regs = match gen {
        Gen::Gen8 => RENDER_STATE_GEN8,
        Gen::Gen9 => RENDER_STATE_GEN9,
    };
    (engine == Engine::Rcs).then_some(LriList { header: RENDER_STATE_HEADER, regs })
}

/// Whether `reg` (absolute) is a register of the ring context of `engine` on `gen` that its engine
/// context does not also hold: the ring, the batch state a preempted run resumes from, the
/// workaround-batch pointers, CONTEXT_CONTROL, the timestamp and the page-table roots. The host
/// fills these in the shadow; an engine context that loaded one would override it.
pub fn ring_context_only(gen: Gen, engine: Engine, reg: u32) -> bool {
    let Some(rel) = reg.checked_sub(engine.mmio_base()) else {
        return false;
    };
    let in_ring = ring_context_lists(gen, engine).iter().any(|l| l.regs.contains(&rel));
    in_ring && !engine_context_list(gen, engine).regs.contains(&rel)
}

/// Bytes of the context image of `engine` on `gen` (status page included).
pub const fn context_size(gen: Gen, engine: Engine) -> u64 {
    let pages = match (gen, engine) {
        (Gen::Gen8, Engine::Rcs) => 20,
        (Gen::Gen9, Engine::Rcs) => 22,
        _ => 2,
    };
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_fit_their_part_of_the_page() {
        for gen in [Gen::Gen8, Gen::Gen9] {
            for engine in Engine::ALL {
                let lists = ring_context_lists(gen, engine);
                for w in lists.windows(2) {
                    assert!(w[0].value_index(w[0].regs.len() - 1) < w[1].header, "{gen:?} {engine}");
                }
                let last = lists[2];
                assert!(last.value_index(last.regs.len() - 1) < ENGINE_CONTEXT_DWORD);
                let e = engine_context_list(gen, engine);
                assert!(e.header >= ENGINE_CONTEXT_DWORD && e.value_index(e.regs.len() - 1) < PAGE_DWORDS);
                if let Some(r) = render_state_list(gen, engine) {
                    let image = context_size(gen, engine) as usize / 4 - PAGE_DWORDS;
                    assert!(r.header >= PAGE_DWORDS && r.value_index(r.regs.len() - 1) < image);
                }
            }
        }
        // The render state list is exactly the user-writable render registers the engine list
        // does not hold, plus the context-saved whitelist.
        for gen in [Gen::Gen8, Gen::Gen9] {
            let list = render_state_list(gen, Engine::Rcs).map(|l| l.regs).unwrap_or_default();
            assert!(list.windows(2).all(|w| w[0] < w[1]));
            for reg in (0x2000..0x10000).step_by(4) {
                let rel = reg - 0x2000;
                let want = crate::hw::nonpriv::vgpu_writable(gen, Engine::Rcs, reg) && !ENGINE_REGS.contains(&rel);
                assert_eq!(list.contains(&rel), want, "{gen:?} {reg:#x}");
            }
        }
        // The fields the shadow context fills are where the lists put them.
        let [ring, roots, _] = ring_context_lists(Gen::Gen9, Engine::Vcs);
        assert_eq!(ring.value_index(0), idx::CONTEXT_CONTROL);
        assert_eq!(ring.value_index(1), idx::RING_HEAD);
        assert_eq!(ring.value_index(4), idx::RING_CTL);
        assert_eq!(ring.value_index(11), idx::BB_PER_CTX_PTR);
        assert_eq!(ring.value_index(13), idx::INDIRECT_CTX_OFFSET);
        assert_eq!(roots.value_index(0), idx::CTX_TIMESTAMP);
        assert_eq!(roots.value_index(1), idx::PDP3_UDW);
        assert_eq!(ring_context_lists(Gen::Gen9, Engine::Bcs)[2].value_index(0), idx::BCS_SWCTRL);
        assert_eq!(ENGINE_REGS.len(), 44);
        assert_eq!(lri_header(14), 0x1100_101b);
        assert!(
            ring_context_only(Gen::Gen9, Engine::Rcs, 0x2140) && ring_context_only(Gen::Gen9, Engine::Bcs, 0x2_2118)
        );
        assert!(!ring_context_only(Gen::Gen8, Engine::Vcs, 0x1_2028), "EXCC is in both on Gen8");
        assert!(
            !ring_context_only(Gen::Gen9, Engine::Rcs, 0x2600) && !ring_context_only(Gen::Gen9, Engine::Rcs, 0x140)
        );
    }
}
