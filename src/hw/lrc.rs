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
    }
}
