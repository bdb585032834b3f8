//! What a non-privileged batch may do on Gen8/Gen9: the registers it may write, and which
//! commands and address-space selections the hardware refuses from it.
//!
//! A batch started with MI_BATCH_BUFFER_START in the PPGTT is non-privileged, and so is every
//! batch it starts. Sources (see docs/security.md): the Gen9 Bspec text for
//! MI_LOAD_REGISTER_IMM ("any writes targeting the register not listed in the User Mode
//! Non-Privileged Register will convert this command to a NOOP"), i915's description of the
//! Gen8+ command privilege violation ("the CP replaces the instruction with a no-op ... non-fatal
//! error, parsing continues"), the per-engine FORCE_TO_NONPRIV whitelist (i915
//! `intel_workarounds.c`), and IGT `gem_ctx_isolation`'s table of registers a user batch writes
//! and reads back on Gen8/Gen9.

use super::{Engine, Gen};

/// Absolute register ranges (`end` exclusive) a non-privileged render batch may write.
const RENDER: &[(u32, u32)] = &[
    (0x20c0, 0x20c4), // INSTPM
    (0x2158, 0x215c), // BB_OFFSET
    (0x2290, 0x2298), // GPGPU_THREADS_DISPATCHED
    (0x22c8, 0x22d0), // PS_INVOCATION_COUNT_0
    (0x22d8, 0x22e0), // PS_DEPTH_COUNT_0
    (0x22f0, 0x2300), // PS_INVOCATION_COUNT_1, PS_DEPTH_COUNT_1
    (0x2300, 0x2348), // HS/DS invocations, IA vertices/primitives, VS/GS/CL counters
    (0x2360, 0x2368), // OA_CTX_CONTROL, OACTXID
    (0x2400, 0x2420), // MI_PREDICATE_SRC0/1, DATA, RESULT, RESULT_1
    (0x2420, 0x2424), // 3DPRIM_END_OFFSET
    (0x2430, 0x2444), // 3DPRIM_START_VERTEX .. 3DPRIM_BASE_VERTEX
    (0x2448, 0x2458), // PS_INVOCATION_COUNT_2, PS_DEPTH_COUNT_2
    (0x2500, 0x250c), // GPGPU_DISPATCHDIMX/Y/Z
    (0x5200, 0x5220), // SO_NUM_PRIMS_WRITTEN0..3
    (0x5240, 0x5260), // SO_PRIM_STORAGE_NEEDED0..3
    (0x5280, 0x5290), // SO_WRITE_OFFSET0..3
    (0x7000, 0x700c), // CACHE_MODE_0/1, GT_MODE
    (0x7034, 0x7038), // L3CNTLREG
    (0xe400, 0xe408), // TD_CTL, TD_CTL2
];

/// Gen9 only: CS_DEBUG_MODE2, the Gen9 home of the "CONSTANT_BUFFER address offset disable" bit
/// INSTPM carries on Gen8 (Mesa's iris and anv set it from their first user batch, "only safe on
/// kernels with context isolation support": a context-saved, user-writable register).
pub const CS_DEBUG_MODE2: u32 = 0x20d8;

/// Render registers i915 opens to user batches through FORCE_TO_NONPRIV on Gen9 (its
/// `gen9_whitelist_build`) that the render context saves, so a write stays in the context that
/// made it: CS_CHICKEN1 (mid-batch preemption control), COMMON_SLICE_CHICKEN2 and HDC_CHICKEN1
/// (IGT's `gem_ctx_isolation` checks each is context-saved on Gen9). i915 also opens CTX_PREEMPT
/// (0x2248) and, on SKL/KBL, L3SQCREG4 (0xb118); neither is context-saved (IGT marks both
/// "NOCTX"), so a write would reach every context and every vGPU: they stay closed to
/// non-privileged batches.
pub const GEN9_WHITELIST: [u32; 3] = [0x2580, 0x7014, 0x7304];

/// FORCE_TO_NONPRIV slot 0, relative to the engine's base; 12 slots follow.
pub const FORCE_TO_NONPRIV: u32 = 0x4d0;
/// FORCE_TO_NONPRIV slots per engine.
pub const FORCE_TO_NONPRIV_SLOTS: u32 = 12;
/// The register field of a FORCE_TO_NONPRIV slot value (bits 25:2).
pub const NONPRIV_ADDRESS_MASK: u32 = 0x03ff_fffc;
/// A slot's access field (bits 29:28, Coffee Lake and later): 0 read/write, 1 read, 2 write.
const NONPRIV_ACCESS_SHIFT: u32 = 28;
/// A slot's range field (bits 1:0, Coffee Lake and later): 1, 4, 16 or 64 registers.
const NONPRIV_RANGE_MASK: u32 = 0x3;

/// Whether a non-privileged batch on `engine` may write register `reg` (absolute offset) by its
/// user-mode list alone (the CS general-purpose registers of every engine, the blitter's
/// BCS_SWCTRL, the render pipeline's counters and state listed above).
pub fn user_writable(gen: Gen, engine: Engine, reg: u32) -> bool {
    let base = engine.mmio_base();
    if reg.checked_sub(base).is_some_and(|rel| (0x600..0x680).contains(&rel)) {
        return true;
    }
    match engine {
        Engine::Rcs => {
            RENDER.iter().any(|&(s, e)| (s..e).contains(&reg)) || (gen == Gen::Gen9 && reg == CS_DEBUG_MODE2)
        }
        Engine::Bcs => reg == base + 0x200,
        _ => false,
    }
}

/// Whether a non-privileged batch on `engine` may write `reg` on a vGPU: its user-mode list, or on
/// Gen9 render one of the context-saved registers of i915's whitelist ([`GEN9_WHITELIST`]). The
/// scanner applies this to batches started in the PPGTT; the rest of the hardware's behaviour
/// (the slots a guest programmed) does not matter there, since the copies run privileged.
pub fn vgpu_writable(gen: Gen, engine: Engine, reg: u32) -> bool {
    user_writable(gen, engine, reg) || (gen == Gen::Gen9 && engine == Engine::Rcs && GEN9_WHITELIST.contains(&reg))
}

/// Whether FORCE_TO_NONPRIV slot value `slot` lets a non-privileged batch write `reg`.
pub fn slot_allows_write(slot: u32, reg: u32) -> bool {
    let first = slot & NONPRIV_ADDRESS_MASK;
    let count = 1u32 << (2 * (slot & NONPRIV_RANGE_MASK));
    let access = (slot >> NONPRIV_ACCESS_SHIFT) & 3;
    let writes = access == 0 || access == 2;
    writes && reg >= first && reg < first.saturating_add(4 * count)
}

/// MI commands the hardware turns into MI_NOOP in a non-privileged batch (a command privilege
/// violation, non-fatal): what i915's Gen7 parser refuses from user batches and the ones that
/// reach host state (GTT, display, the ring's status page, arbitration).
pub const PRIVILEGED_COMMANDS: &[&str] = &[
    "MI_UPDATE_GTT",
    "MI_DISPLAY_FLIP",
    "MI_LOAD_SCAN_LINES_INCL",
    "MI_LOAD_SCAN_LINES_EXCL",
    "MI_SET_CONTEXT",
    "MI_STORE_DATA_INDEX",
    "MI_REPORT_HEAD",
    "MI_ARB_ON_OFF",
    "MI_SUSPEND_FLUSH",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert!(RENDER.windows(2).all(|w| w[0].1 <= w[1].0));
        assert!(user_writable(Gen::Gen9, Engine::Rcs, 0x2600));
        assert!(user_writable(Gen::Gen9, Engine::Vcs, 0x1_2604));
        assert!(user_writable(Gen::Gen9, Engine::Rcs, 0x2310));
        assert!(user_writable(Gen::Gen8, Engine::Bcs, 0x2_2200));
        assert!(!user_writable(Gen::Gen9, Engine::Rcs, 0x2080));
        assert!(!user_writable(Gen::Gen9, Engine::Rcs, 0x2270));
        assert!(!user_writable(Gen::Gen9, Engine::Vcs, 0x2600));
        assert!(user_writable(Gen::Gen9, Engine::Rcs, CS_DEBUG_MODE2));
        assert!(!user_writable(Gen::Gen8, Engine::Rcs, CS_DEBUG_MODE2), "INSTPM carries the bit on Gen8");
        assert!(vgpu_writable(Gen::Gen9, Engine::Rcs, 0x7304) && !vgpu_writable(Gen::Gen8, Engine::Rcs, 0x7304));
        assert!(!vgpu_writable(Gen::Gen9, Engine::Rcs, 0x2248), "CTX_PREEMPT is not context-saved");
        assert!(slot_allows_write(0x2580, 0x2580));
        assert!(!slot_allows_write(0x2348 | 1 << 28 | 1, 0x2350), "a read-only range");
        assert!(slot_allows_write(0x2348 | 1, 0x2354) && !slot_allows_write(0x2348 | 1, 0x2358));
    }
}
