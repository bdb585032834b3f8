//! Engine register state that is not part of the logical context and so must be switched by the
//! device model when an engine changes owner (the lists GVT-g keeps in mmio_context.c): mode and
//! chicken registers, FORCE_NONPRIV whitelist slots, and on Gen9 the MOCS tables of the engines
//! whose MOCS are not context-saved.

use crate::hw::{Engine, Gen};

/// One switched register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchedReg {
    /// Engine whose owner decides the value.
    pub engine: Engine,
    /// Absolute MMIO offset.
    pub reg: u32,
    /// A masked register: the upper 16 bits of a write select which lower bits change.
    pub masked: bool,
    /// Saved in the logical context on Gen9 (so not switched there).
    pub in_context: bool,
}

const fn r(engine: Engine, reg: u32, masked: bool, in_context: bool) -> SwitchedReg {
    SwitchedReg { engine, reg, masked, in_context }
}

use Engine::{Bcs, Rcs, Vcs, Vcs2, Vecs};

/// Gen8 and Gen9 (27 registers).
const COMMON: &[SwitchedReg] = &[
    r(Rcs, 0x229c, true, false),   // RING_MODE
    r(Rcs, 0x2248, false, false),  // CTX_PREEMPT
    r(Rcs, 0x2098, false, false),  // HWSTAM
    r(Rcs, 0x20c0, true, true),    // INSTPM
    r(Rcs, 0x7004, true, true),    // CACHE_MODE_1
    r(Rcs, 0x7008, true, true),    // GT_MODE
    r(Rcs, 0x7000, true, true),    // CACHE_MODE_0
    r(Rcs, 0x7010, true, true),    // COMMON_SLICE_CHICKEN1
    r(Rcs, 0x7300, true, true),    // HDC_CHICKEN0
    r(Rcs, 0x83a4, true, true),    // VF_GUARDBAND
    r(Bcs, 0x2229c, true, false),  // GFX_MODE
    r(Bcs, 0x2209c, true, false),  // MI_MODE
    r(Bcs, 0x220c0, true, false),  // INSTPM
    r(Bcs, 0x22098, false, false), // HWSTAM
    r(Bcs, 0x22028, true, false),  // EXCC
];

/// Added on Gen9.
const GEN9: &[SwitchedReg] = &[
    r(Rcs, 0x40e0, false, false), // PRIVATE_PAT lo
    r(Rcs, 0x40e4, false, false), // PRIVATE_PAT hi
    r(Rcs, 0x2580, true, true),   // CS_CHICKEN1
    r(Rcs, 0x7014, true, true),   // COMMON_SLICE_CHICKEN2
    r(Rcs, 0x20ec, true, false),  // CS_DEBUG_MODE1
    r(Rcs, 0xb118, false, false),
    r(Rcs, 0xb11c, false, false),
    r(Rcs, 0xb008, false, false),
    r(Rcs, 0xe100, true, true), // HALF_SLICE_CHICKEN1
    r(Rcs, 0xe180, true, true),
    r(Rcs, 0xe184, true, true),
    r(Rcs, 0xe188, true, true),
    r(Rcs, 0xe194, true, true),
    r(Rcs, 0xe4f0, true, true),   // ROW_CHICKEN
    r(Rcs, 0x4de0, false, false), // TR-TT
    r(Rcs, 0x4de4, false, false),
    r(Rcs, 0x4de8, false, false),
    r(Rcs, 0x4dec, false, false),
    r(Rcs, 0x4df0, false, false),
    r(Rcs, 0x4df4, false, false),
    r(Rcs, 0x4dfc, false, false),
    r(Vcs, 0x12028, true, false),  // EXCC
    r(Vcs2, 0x1c028, true, false), // EXCC
    r(Vecs, 0x1a028, true, false), // EXCC
    r(Rcs, 0x7304, true, true),    // HDC_CHICKEN1
    r(Rcs, 0x940c, false, false),  // UCGCTL4
    r(Rcs, 0x4ab8, false, false),
    r(Rcs, 0x4ab0, false, false),
    r(Rcs, 0x20d4, true, false),  // CSFE_CHICKEN1
    r(Rcs, 0x20d8, true, true),   // CS_DEBUG_MODE2 (masked; the render context saves it on Gen9)
    r(Rcs, 0xb004, false, false), // GARBCNTL
    r(Rcs, 0x20a0, false, false), // FF_THREAD_MODE
    r(Rcs, 0x20e4, true, false),  // FF_SLICE_CS_CHICKEN2
];

/// FORCE_NONPRIV slots of the render engine (12 on Gen8/Gen9), from 0x24d0.
const NONPRIV_SLOTS: u32 = 12;

/// MOCS control registers per engine (64 each) on Gen9, where they are not in the context image
/// (every engine but the render engine, whose MOCS the context saves).
fn mocs_base(engine: Engine) -> Option<u32> {
    match engine {
        Rcs => None,
        Vcs => Some(0xc900),
        Vcs2 => Some(0xca00),
        Vecs => Some(0xcb00),
        Bcs => Some(0xcc00),
    }
}

/// The registers switched for `engine` on `gen`: Gen8 switches every listed register, Gen9 only
/// those its logical context does not save, plus the engine's MOCS table.
pub fn switched(gen: Gen, engine: Engine) -> Vec<SwitchedReg> {
    let mut out: Vec<SwitchedReg> = COMMON.iter().copied().filter(|x| x.engine == engine).collect();
    if engine == Rcs {
        out.extend((0..NONPRIV_SLOTS).map(|i| r(Rcs, 0x24d0 + 4 * i, false, false)));
    }
    if gen == Gen::Gen9 {
        out.extend(GEN9.iter().copied().filter(|x| x.engine == engine));
        out.retain(|x| !x.in_context);
        if let Some(base) = mocs_base(engine) {
            out.extend((0..64).map(|i| r(engine, base + 4 * i, false, false)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_sizes() {
        let total8: usize = Engine::ALL.iter().map(|&e| switched(Gen::Gen8, e).len()).sum();
        assert_eq!(total8, 27, "GVT-g's Gen8 list");
        let rcs9 = switched(Gen::Gen9, Rcs);
        assert!(rcs9.iter().all(|x| !x.in_context));
        assert!(rcs9.iter().any(|x| x.reg == 0x24d0 + 44), "every FORCE_NONPRIV slot");
        assert_eq!(switched(Gen::Gen9, Bcs).iter().filter(|x| (0xcc00..0xcd00).contains(&x.reg)).count(), 64);
        for e in Engine::ALL {
            let l = switched(Gen::Gen9, e);
            let mut regs: Vec<u32> = l.iter().map(|x| x.reg).collect();
            regs.sort_unstable();
            regs.dedup();
            assert_eq!(regs.len(), l.len(), "no register twice on {e}");
        }
    }
}
