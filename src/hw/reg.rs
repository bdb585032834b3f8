//! BAR0 register offsets the device model gives behaviour to (names as in i915's `i915_reg.h`).
//! Offsets are absolute in BAR0 unless they sit in [`ring`], which are relative to an engine's
//! MMIO base ([`Engine::mmio_base`](super::Engine::mmio_base)).

/// Size of the register part of BAR0.
pub const MMIO_SIZE: u32 = 2 << 20;

/// Per-engine registers, relative to the engine's MMIO base.
pub mod ring {
    /// RING_TAIL (legacy ring submission).
    pub const TAIL: u32 = 0x30;
    /// RING_HEAD.
    pub const HEAD: u32 = 0x34;
    /// RING_START.
    pub const START: u32 = 0x38;
    /// RING_CTL.
    pub const CTL: u32 = 0x3c;
    /// RING_ACTHD.
    pub const ACTHD: u32 = 0x74;
    /// RING_HWS_PGA: GGTT address of the hardware status page.
    pub const HWS_PGA: u32 = 0x80;
    /// RING_HWSTAM.
    pub const HWSTAM: u32 = 0x98;
    /// RING_MI_MODE (masked).
    pub const MI_MODE: u32 = 0x9c;
    /// MI_MODE: stop the ring.
    pub const STOP_RING: u32 = 1 << 8;
    /// MI_MODE: the ring is stopped (read only).
    pub const MODE_IDLE: u32 = 1 << 9;
    /// RING_IMR.
    pub const IMR: u32 = 0xa8;
    /// RING_RESET_CTL (masked): bit 0 requests, bit 1 reports ready.
    pub const RESET_CTL: u32 = 0xd0;
    /// RESET_CTL: request a reset.
    pub const REQUEST_RESET: u32 = 1 << 0;
    /// RESET_CTL: ready for reset (read only).
    pub const READY_TO_RESET: u32 = 1 << 1;
    /// PDP0 lower dword; PDPn lower at `+ 8n`, upper at `+ 8n + 4`. PDP0 holds the PML4 of a
    /// 4-level context.
    pub const PDP0_LDW: u32 = 0x270;
    /// RING_MODE_GEN7 / GFX_MODE (masked).
    pub const RING_MODE: u32 = 0x29c;
    /// GFX_MODE: run-list (execlist) submission enable.
    pub const GFX_RUN_LIST_ENABLE: u32 = 1 << 15;
    /// GFX_MODE: PPGTT enable.
    pub const GFX_PPGTT_ENABLE: u32 = 1 << 9;
    /// RING_TIMESTAMP (low dword).
    pub const TIMESTAMP: u32 = 0x358;
    /// RING_TIMESTAMP_UDW.
    pub const TIMESTAMP_UDW: u32 = 0x35c;
    /// End of the per-engine register block the model tracks.
    pub const BLOCK_END: u32 = 0x800;
}

/// GEN6_GDRST.
pub const GDRST: u32 = 0x941c;
/// GDRST bit resetting the whole GPU.
pub const GRDOM_FULL: u32 = 1 << 0;
/// GDRST bit resetting the GuC.
pub const GRDOM_GUC: u32 = 1 << 5;

/// FORCEWAKE_MT (Broadwell) / FORCEWAKE_GT_GEN9 (masked request).
pub const FORCEWAKE_MT: u32 = 0xa188;
/// FORCEWAKE_ACK_HSW / FORCEWAKE_ACK_GT_GEN9.
pub const FORCEWAKE_ACK_GT: u32 = 0x13_0044;
/// FORCEWAKE_RENDER_GEN9 (masked request).
pub const FORCEWAKE_RENDER: u32 = 0xa278;
/// FORCEWAKE_ACK_RENDER_GEN9.
pub const FORCEWAKE_ACK_RENDER: u32 = 0xd84;
/// FORCEWAKE_MEDIA_GEN9 (masked request).
pub const FORCEWAKE_MEDIA: u32 = 0xa270;
/// FORCEWAKE_ACK_MEDIA_GEN9.
pub const FORCEWAKE_ACK_MEDIA: u32 = 0xd88;

/// GEN6_GT_THREAD_STATUS_REG (0: no thread busy).
pub const GT_THREAD_STATUS: u32 = 0x13_805c;
/// GEN6_GT_CORE_STATUS (0: C0).
pub const GT_CORE_STATUS: u32 = 0x13_8060;

/// GEN6_PCODE_MAILBOX.
pub const PCODE_MAILBOX: u32 = 0x13_8124;
/// GEN9_PCODE_SAGV_CONTROL: data bit 0 in the reply reads "SAGV is disabled".
pub const PCODE_SAGV_CONTROL: u32 = 0x21;
/// GEN6_PCODE_DATA.
pub const PCODE_DATA: u32 = 0x13_8128;
/// GEN6_PCODE_DATA1.
pub const PCODE_DATA1: u32 = 0x13_812c;
/// Mailbox busy bit (set by the driver, cleared on completion).
pub const PCODE_READY: u32 = 1 << 31;
/// Mailbox completion code field.
pub const PCODE_ERROR_MASK: u32 = 0xff;
/// Mailbox command: read RC6 VIDs.
pub const PCODE_READ_RC6VIDS: u32 = 0x5;
/// Mailbox command: read memory latencies (Gen9).
pub const PCODE_READ_MEM_LATENCY: u32 = 0x6;
/// Mailbox command: CD clock control (Gen9).
pub const PCODE_CDCLK_CONTROL: u32 = 0x7;

/// GUC_STATUS.
pub const GUC_STATUS: u32 = 0xc000;
/// GUC_STATUS: microcontroller held in reset.
pub const GUC_MIA_IN_RESET: u32 = 1 << 0;

/// GEN8_FUSE2: slice enables and subslice disables.
pub const FUSE2: u32 = 0x9120;
/// EU disable fuses: Gen8 EU_DISABLE0..2, Gen9 EU_DISABLE per slice.
pub const EU_DISABLE0: u32 = 0x9134;

/// GEN8_MASTER_IRQ.
pub const MASTER_IRQ: u32 = 0x4_4200;
/// GEN8_GT_ISR(0); bank `n` at `+ 0x10 * n`.
pub const GT_ISR0: u32 = 0x4_4300;
/// GEN8_DE_PIPE_ISR(A); pipe `p` at `+ 0x10 * p`.
pub const DE_PIPE_ISR_A: u32 = 0x4_4400;
/// GEN8_DE_PORT_ISR.
pub const DE_PORT_ISR: u32 = 0x4_4440;
/// GEN8_DE_MISC_ISR.
pub const DE_MISC_ISR: u32 = 0x4_4460;
/// GEN8_PCU_ISR.
pub const PCU_ISR: u32 = 0x4_44e0;
/// SDEISR (south display engine, PCH).
pub const SDE_ISR: u32 = 0xc_4000;

/// FENCE_REG_GEN6_LO(0); fence `i` at `+ 8 * i` (64 bits each).
pub const FENCE0: u32 = 0x10_0000;
/// Fence slots the register block holds.
pub const FENCE_SLOTS: u32 = 32;
/// GFX_FLSH_CNTL_GEN6 (GGTT write flush).
pub const GFX_FLSH_CNTL: u32 = 0x10_1008;
/// GEN8_RTCR, the render engine's TLB invalidation; VCS, VCS2, BCS, VECS follow at +4 each.
pub const TLB_INVALIDATE_RCS: u32 = 0x4260;

/// DP_AUX_CH_CTL of DDI A; B, C and D follow every 0x100.
pub const DP_AUX_CH_CTL_A: u32 = 0x6_4010;
/// DP_AUX_CH_CTL: a transaction is in flight (the driver sets it to start one).
pub const AUX_SEND_BUSY: u32 = 1 << 31;
/// DP_AUX_CH_CTL: the transaction finished (write one to clear).
pub const AUX_DONE: u32 = 1 << 30;
/// DP_AUX_CH_CTL: no reply in time (write one to clear).
pub const AUX_TIME_OUT_ERROR: u32 = 1 << 28;
/// DP_AUX_CH_CTL: a reply was malformed (write one to clear).
pub const AUX_RECEIVE_ERROR: u32 = 1 << 25;
/// EDP_PSR_IMR (Gen8/Gen9 panel self refresh interrupts); EDP_PSR_IIR follows at +4.
pub const EDP_PSR_IMR: u32 = 0x6_4834;
/// EDP_PSR_IIR.
pub const EDP_PSR_IIR: u32 = 0x6_4838;
/// SBI_CTL_STAT: the LPT PCH sideband interface (Broadwell); the driver writes a command with
/// SBI_BUSY set and polls for it to clear. SBI_ADDR and SBI_DATA sit 8 and 4 bytes below.
pub const SBI_CTL_STAT: u32 = 0xc_6008;
/// SBI_CTL_STAT: a transaction is in flight.
pub const SBI_BUSY: u32 = 1 << 0;
/// SBI_CTL_STAT: the transaction failed.
pub const SBI_RESPONSE_FAIL: u32 = 1 << 1;
/// HSW_PWR_WELL_CTL1 (BIOS); CTL2 (driver) at +4, CTL3, CTL4 after.
pub const PWR_WELL_CTL1: u32 = 0x4_5400;
/// SKL_FUSE_STATUS: power-gate fuse distribution.
pub const SKL_FUSE_STATUS: u32 = 0x4_2000;
/// DBUF_CTL (Gen9): request bit 31, state bit 30.
pub const DBUF_CTL: u32 = 0x4_5008;
/// LCPLL1_CTL (Gen9): enable bit 31, lock bit 30.
pub const LCPLL1_CTL: u32 = 0x4_6010;
/// LCPLL_CTL (Broadwell): bit 31 disables, bit 30 locked.
pub const LCPLL_CTL: u32 = 0x13_0040;
