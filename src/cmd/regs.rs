//! The register allow-list: which MMIO registers a guest command stream may read or write.
//!
//! A command stream may touch the registers the hardware saves in the logical context image (they
//! belong to the context, so a write cannot leak to another vGPU) and an explicit list of what
//! user-mode drivers legitimately use in batches: CS GPRs for MI_MATH, MI_PREDICATE registers,
//! 3DPRIM_* indirect-draw registers, GPGPU dispatch dimensions, stream-out counters and write
//! offsets, timestamps and pipeline-statistics counters, and the render engine's per-context
//! cache-mode, L3-configuration, MOCS and chicken registers. Everything else is denied: ring
//! control, status page, execlist and interrupt registers, page-table roots (handled separately),
//! display, GTT, fences, power management and reset.

use crate::hw::{nonpriv, Engine, Gen};

/// How a command accesses a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegAccess {
    /// The register's value is read (MI_STORE_REGISTER_MEM, the source of MI_LOAD_REGISTER_REG).
    Read,
    /// The register is written (MI_LOAD_REGISTER_IMM/MEM, the destination of LRR, PIPE_CONTROL).
    Write,
}

/// What the allow-list says about one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegPolicy {
    /// Not accessible from a command stream.
    Denied,
    /// Readable only.
    ReadOnly,
    /// Readable and writable.
    ReadWrite,
    /// A FORCE_TO_NONPRIV slot: writable only by MI_LOAD_REGISTER_IMM with an allowed value.
    ForceNonpriv,
    /// A page-directory pointer (PDPn / PML4): an MI_LOAD_REGISTER_IMM is recorded so the value can
    /// be replaced by the shadow page table's address; other access is denied.
    PageTableRoot,
    /// A host-owned register i915 writes for its own reasons (DERRMR, FORCEWAKE_MT): an
    /// MI_LOAD_REGISTER_IMM to it is dropped from the copy.
    Discard,
}

impl RegPolicy {
    /// Whether plain `access` is allowed.
    pub const fn allows(self, access: RegAccess) -> bool {
        matches!((self, access), (RegPolicy::ReadOnly, RegAccess::Read) | (RegPolicy::ReadWrite, _))
    }
}

/// Largest MMIO register offset a command can name (bits 22:2 of the offset dword).
pub const REG_OFFSET_MASK: u32 = 0x007f_fffc;

struct Range {
    start: u32,
    end: u32,
    policy: RegPolicy,
}

const fn r(start: u32, end: u32, policy: RegPolicy) -> Range {
    Range { start, end, policy }
}

use RegPolicy::{Discard, ForceNonpriv, PageTableRoot, ReadOnly as RO, ReadWrite as RW};

/// Offsets relative to every engine's MMIO base, sorted, `end` exclusive.
static ENGINE_RELATIVE: &[Range] = &[
    r(0x028, 0x02c, RW),            // RING_EXCC (context image)
    r(0x068, 0x06c, RO),            // RING_IPEHR
    r(0x074, 0x078, RO),            // RING_ACTHD
    r(0x094, 0x098, RO),            // RING_NOPID
    r(0x09c, 0x0a0, RW),            // RING_MI_MODE (context image, masked)
    r(0x0c0, 0x0c4, RW),            // RING_INSTPM (context image, masked)
    r(0x110, 0x120, RO),            // BB state / 2nd-level BB address
    r(0x140, 0x144, RO),            // RING_BBADDR
    r(0x150, 0x158, RO),            // context image, unnamed
    r(0x158, 0x15c, RW),            // RING_BB_OFFSET (user-writable, context image)
    r(0x168, 0x16c, RO),            // RING_BBADDR_UDW
    r(0x170, 0x174, RO),            // context image, unnamed
    r(0x178, 0x180, RO),            // context image, unnamed
    r(0x234, 0x23c, RO),            // EXECLIST_STATUS
    r(0x270, 0x290, PageTableRoot), // PDP0..3 LDW/UDW
    r(0x358, 0x360, RO),            // RING_TIMESTAMP / _UDW
    r(0x3a8, 0x3ac, RO),            // RING_CTX_TIMESTAMP
    r(0x3b8, 0x3bc, RW),            // RING_PREDICATE_RESULT
    r(0x41c, 0x420, RW),            // MI_PREDICATE_RESULT_1
    r(0x4d0, 0x500, ForceNonpriv),  // RING_FORCE_TO_NONPRIV 0..11
    r(0x600, 0x680, RW),            // CS_GPR 0..15 (MI_MATH)
];

/// Absolute offsets the render engine may touch, sorted, `end` exclusive.
static RENDER_GLOBAL: &[Range] = &[
    r(0x2088, 0x208c, RW), // FF_SLICE_CHICKEN
    r(0x2090, 0x2094, RW), // 3D_CHICKEN3 (i915's gen9 indirect-context workaround batch)
    r(0x20d8, 0x20dc, RW), // CS_DEBUG_MODE2 (Gen9; user-writable, context-saved; Mesa's first batch)
    r(0x20e0, 0x20f0, RW), // FF_SLICE_CS_CHICKEN1/2, CS_DEBUG_MODE1
    r(0x21f0, 0x21f4, RW), // read and restored by Windows drivers (GVT-g issue #60)
    r(0x2248, 0x224c, RW), // FORCE_NONPRIV-listed
    r(0x2290, 0x2298, RW), // GPGPU_THREADS_DISPATCHED (the rest of this block: user-writable, context-saved)
    r(0x22c8, 0x22d0, RW), // PS_INVOCATION_COUNT_0
    r(0x22d8, 0x22e0, RW), // PS_DEPTH_COUNT_0
    r(0x22f0, 0x2300, RW), // PS_INVOCATION_COUNT_1, PS_DEPTH_COUNT_1
    r(0x2300, 0x2348, RW), // HS/DS/IA/VS/GS/CL statistics
    r(0x2348, 0x2358, RO), // PS_INVOCATION_COUNT, PS_DEPTH_COUNT (their Gen7 places)
    r(0x2360, 0x2368, RW), // OA_CTX_CONTROL, OACTXID
    r(0x2400, 0x2420, RW), // MI_PREDICATE_SRC0/1, DATA, RESULT
    r(0x2420, 0x2424, RW), // 3DPRIM_END_OFFSET
    r(0x2430, 0x2444, RW), // 3DPRIM_START_VERTEX .. 3DPRIM_BASE_VERTEX
    r(0x2448, 0x2458, RW), // PS_INVOCATION_COUNT_2, PS_DEPTH_COUNT_2
    r(0x2500, 0x250c, RW), // GPGPU_DISPATCHDIMX/Y/Z
    r(0x2580, 0x2584, RW), // CS_CHICKEN1 (preemption control, written by Mesa)
    r(0x2690, 0x269c, RW), // FORCE_NONPRIV-listed
    r(0x2754, 0x2758, RW), // FORCE_NONPRIV-listed
    r(0x28a0, 0x28a4, RW), // FORCE_NONPRIV-listed
    r(0x4de0, 0x4de8, RW), // FORCE_NONPRIV-listed
    r(0x4dfc, 0x4e00, RW), // FORCE_NONPRIV-listed
    r(0x5200, 0x5220, RW), // SO_NUM_PRIMS_WRITTEN0..3
    r(0x5240, 0x5260, RW), // SO_PRIM_STORAGE_NEEDED0..3
    r(0x5280, 0x5290, RW), // SO_WRITE_OFFSET0..3
    r(0x7000, 0x7040, RW), // CACHE_MODE_0/1, GT_MODE, COMMON_SLICE_CHICKEN2, L3CNTLREG
    r(0x7300, 0x7310, RW), // HDC_CHICKEN0, COMMON_SLICE_CHICKEN3, SLICE_ECO_CHICKEN0
    r(0x7700, 0x7710, RW), // FORCE_NONPRIV-listed
    r(0x83a8, 0x83ac, RW), // FORCE_NONPRIV-listed
    r(0xb020, 0xb0a0, RW), // GEN9_LNCFCMOCS (L3 cache control), switched per vGPU
    r(0xb100, 0xb120, RW), // L3SQCREG1..4
    r(0xc800, 0xc900, RW), // the render engine's GEN9 MOCS table (context-saved)
    r(0xe100, 0xe200, RW), // HALF_SLICE_CHICKEN1..7
    r(0xe400, 0xe600, RW), // ROW_CHICKEN, ROW_CHICKEN2..4
];

/// Offsets relative to a video engine's base (MFX/MFC/HCP status registers read for bit-rate control).
static VIDEO_RELATIVE: &[Range] = &[r(0x800, 0xa00, RO)];

/// Absolute offsets a video engine may read.
static VIDEO_GLOBAL: &[Range] = &[r(0xd3b0, 0xd3c0, RO)]; // HUC_STATUS/HUC_STATUS2

/// Host-owned registers whose LRI writes are discarded rather than rejected.
static DISCARDED: &[u32] = &[0x4_4050 /* DERRMR */, 0xa188 /* FORCEWAKE_MT */];

/// Registers a FORCE_TO_NONPRIV slot may expose to non-privileged batches (bits 25:2 of the value).
pub static NONPRIV_WHITELIST: &[u32] = &[
    0xd80, 0x20ec, 0x2248, 0x2340, 0x2348, 0x2350, 0x2580, 0x2690, 0x2694, 0x2698, 0x2754, 0x28a0, 0x4de0, 0x4de4,
    0x4dfc, 0x7010, 0x7014, 0x7300, 0x7304, 0x7700, 0x7704, 0x7708, 0x770c, 0x83a8, 0xb110, 0xb118, 0xe100, 0xe18c,
    0xe48c, 0xe5f4,
];

fn find(list: &[Range], off: u32) -> Option<RegPolicy> {
    let i = list.partition_point(|x| x.end <= off);
    list.get(i).filter(|x| x.start <= off).map(|x| x.policy)
}

/// The policy for register `reg` (a byte offset in the MMIO BAR) in a privileged command stream
/// (ring, GGTT batch, workaround batch, context image) on `engine` of `gen`.
pub fn policy(gen: Gen, engine: Engine, reg: u32) -> RegPolicy {
    if DISCARDED.contains(&reg) {
        return Discard;
    }
    if gen == Gen::Gen8 && reg == nonpriv::CS_DEBUG_MODE2 {
        // A Gen9 register: Gen8 has none there, nor a place for it in the render context.
        return RegPolicy::Denied;
    }
    let base = engine.mmio_base();
    let relative = reg.checked_sub(base).filter(|&o| o < 0x1000).and_then(|rel| {
        find(ENGINE_RELATIVE, rel).or(match engine {
            Engine::Vcs | Engine::Vcs2 => find(VIDEO_RELATIVE, rel),
            // The blitter's context image carries BCS_SWCTRL at base + 0x200.
            Engine::Bcs if rel == 0x200 => Some(RW),
            _ => None,
        })
    });
    let global = || match engine {
        Engine::Rcs => find(RENDER_GLOBAL, reg),
        Engine::Vcs | Engine::Vcs2 => find(VIDEO_GLOBAL, reg),
        _ => None,
    };
    relative.or_else(global).unwrap_or(RegPolicy::Denied)
}

/// Whether a non-privileged batch (one started in the PPGTT) may make `access` to `reg` on
/// `engine` of `gen`, as the hardware lets it: write the engine's user-mode registers (and, on the
/// Gen9 render engine, the context-saved registers i915 opens through FORCE_TO_NONPRIV), read
/// those and whatever a privileged stream may read. Every register such a batch may write is one
/// a privileged stream may write too (tested): context state, never host or another vGPU's.
/// What this refuses the hardware drops (a write) or the vGPU hides (a read, see
/// docs/security.md): the scanner turns the command into MI_NOOP instead of refusing the workload.
pub fn user_allows(gen: Gen, engine: Engine, reg: u32, access: RegAccess) -> bool {
    nonpriv::vgpu_writable(gen, engine, reg)
        || (access == RegAccess::Read && policy(gen, engine, reg).allows(RegAccess::Read))
}

/// The absolute register ranges some engine's command stream may touch (render and video
/// globals), for the device model's table of known registers.
pub fn global_ranges() -> impl Iterator<Item = std::ops::Range<u32>> {
    RENDER_GLOBAL.iter().chain(VIDEO_GLOBAL).map(|r| r.start..r.end)
}

/// Whether `value` may be written to a FORCE_TO_NONPRIV slot of `engine`.
pub fn nonpriv_value_allowed(engine: Engine, value: u32) -> bool {
    let reg = value & 0x03ff_fffc;
    reg == engine.mmio_base() + 0x94 || NONPRIV_WHITELIST.binary_search(&reg).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(list: &[Range]) -> bool {
        list.windows(2).all(|w| w[0].end <= w[1].start) && list.iter().all(|x| x.start < x.end)
    }

    #[test]
    fn lists_are_sorted_and_disjoint() {
        assert!(sorted(ENGINE_RELATIVE));
        assert!(sorted(RENDER_GLOBAL));
        assert!(sorted(VIDEO_RELATIVE));
        assert!(NONPRIV_WHITELIST.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn what_user_mode_drivers_use_is_allowed() {
        use RegAccess::*;
        let rcs = Engine::Rcs;
        for (reg, acc) in [
            (0x2600, Write), // CS_GPR0
            (0x267c, Read),  // CS_GPR15 high
            (0x2400, Write), // MI_PREDICATE_SRC0
            (0x2418, Write), // MI_PREDICATE_RESULT
            (0x2438, Write), // 3DPRIM_VERTEX_COUNT
            (0x2500, Write), // GPGPU_DISPATCHDIMX
            (0x5280, Write), // SO_WRITE_OFFSET0
            (0x5200, Read),  // SO_NUM_PRIMS_WRITTEN0
            (0x2358, Read),  // TIMESTAMP
            (0x2350, Read),  // PS_DEPTH_COUNT
            (0x7004, Write), // CACHE_MODE_1
            (0x7034, Write), // L3CNTLREG
            (0xb118, Write), // L3SQCREG4
            (0xe194, Write), // HALF_SLICE_CHICKEN7
            (0x2580, Write), // CS_CHICKEN1
        ] {
            assert!(policy(Gen::Gen9, rcs, reg).allows(acc), "{reg:#x} {acc:?}");
        }
        assert!(policy(Gen::Gen9, Engine::Vcs, 0x1_2600).allows(Write));
        assert!(policy(Gen::Gen9, Engine::Vcs, 0x1_28a0).allows(Read));
        assert!(policy(Gen::Gen9, Engine::Bcs, 0x2_2200).allows(Write));
    }

    #[test]
    fn host_registers_are_denied() {
        for reg in [
            0x2030u32, 0x2034, 0x2038, 0x203c,    // ring registers
            0x2080,    // HWS_PGA
            0x2230,    // ELSP
            0x2244,    // CONTEXT_CONTROL
            0x229c,    // RING_MODE
            0x23a0,    // CSB pointer
            0x941c,    // GDRST
            0x10_0000, // fences
            0x4400,    // GTT control
            0x4_4000,  // display interrupts
        ] {
            assert_eq!(policy(Gen::Gen9, Engine::Rcs, reg), RegPolicy::Denied, "{reg:#x}");
        }
        // Timestamps are readable, not writable.
        assert!(!policy(Gen::Gen9, Engine::Rcs, 0x2358).allows(RegAccess::Write));
        // An engine cannot reach another engine's registers.
        assert_eq!(policy(Gen::Gen9, Engine::Vcs, 0x2600), RegPolicy::Denied);
        assert_eq!(policy(Gen::Gen9, Engine::Bcs, 0x7004), RegPolicy::Denied);
        assert_eq!(policy(Gen::Gen9, Engine::Rcs, 0x2270), RegPolicy::PageTableRoot);
        assert_eq!(policy(Gen::Gen9, Engine::Rcs, 0x24d0), RegPolicy::ForceNonpriv);
        assert_eq!(policy(Gen::Gen9, Engine::Bcs, 0x4_4050), RegPolicy::Discard);
    }

    #[test]
    fn what_a_user_batch_may_write_a_privileged_one_may_too() {
        for gen in [Gen::Gen8, Gen::Gen9] {
            for engine in Engine::ALL {
                for reg in (0..0x4_0000).step_by(4) {
                    if user_allows(gen, engine, reg, RegAccess::Write) {
                        assert_eq!(policy(gen, engine, reg), RW, "{gen:?} {engine} {reg:#x}");
                    }
                }
            }
        }
        use RegAccess::*;
        // IGT's gem_ctx_isolation: SRM of PS_INVOCATION_COUNT_0, LRM into IA_VERTICES_COUNT.
        assert!(user_allows(Gen::Gen9, Engine::Rcs, 0x22c8, Read));
        assert!(user_allows(Gen::Gen9, Engine::Rcs, 0x2310, Write));
        // Mesa's render-context setup.
        assert!(user_allows(Gen::Gen9, Engine::Rcs, 0x20d8, Write));
        assert!(!user_allows(Gen::Gen8, Engine::Rcs, 0x20d8, Write));
        assert_eq!(policy(Gen::Gen8, Engine::Rcs, 0x20d8), RegPolicy::Denied);
        // Readable but not writable from a user batch; neither.
        assert!(
            user_allows(Gen::Gen9, Engine::Rcs, 0x2358, Read) && !user_allows(Gen::Gen9, Engine::Rcs, 0x2358, Write)
        );
        assert!(!user_allows(Gen::Gen9, Engine::Rcs, 0xe100, Write), "a chicken register the hardware guards");
        assert!(!user_allows(Gen::Gen9, Engine::Rcs, 0x2034, Read));
        assert!(!user_allows(Gen::Gen9, Engine::Rcs, 0x2248, Write), "CTX_PREEMPT is not context-saved");
    }

    #[test]
    fn nonpriv_values() {
        assert!(nonpriv_value_allowed(Engine::Rcs, 0x2350));
        assert!(nonpriv_value_allowed(Engine::Rcs, 0x2094));
        assert!(!nonpriv_value_allowed(Engine::Rcs, 0x2080));
        assert!(!nonpriv_value_allowed(Engine::Rcs, 0x941c));
    }
}
