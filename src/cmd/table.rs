//! The Gen8/Gen9 command table and O(1) decoding of a command header.
//!
//! The descriptors are generated at build time from `data/*.csv` (Mesa genxml facts, Linux GVT-g's
//! table for what genxml lacks, and the 2D blitter layouts). Each decode class (MI, 2D, render,
//! video, VEBox) has a direct-index table keyed by the opcode bits of dword 0, so decoding a command
//! is a shift, a mask and two loads: no hashing, no search.

use super::memory::AddrSpace;
use crate::hw::{Engine, EngineMask, Gen};

/// How a command's total length in dwords is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// Always this many dwords; dword 0 has no length field.
    Fixed(u16),
    /// `(dw0 & mask) + bias` dwords.
    Field {
        /// Mask of the DWord Length field in dword 0 (always starts at bit 0).
        mask: u32,
        /// Added to the field value to get the total length.
        bias: u32,
    },
}

impl Length {
    /// Total length in dwords of the command whose first dword is `dw0`.
    #[inline]
    pub const fn of(self, dw0: u32) -> u32 {
        match self {
            Length::Fixed(n) => n as u32,
            // The mask is at most 16 bits wide, so this cannot overflow.
            Length::Field { mask, bias } => (dw0 & mask) + bias,
        }
    }

    /// Width of the length field in bits (0 for fixed-length commands).
    pub const fn field_bits(self) -> u32 {
        match self {
            Length::Fixed(_) => 0,
            Length::Field { mask, .. } => mask.count_ones(),
        }
    }
}

/// An address field of a command, as genxml describes it.
///
/// The field's value is bits `hi..=lo` of the little-endian 64-bit word made of dwords `dword` and
/// `dword + 1`; the address is that value in place (low bits below `lo` are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrField {
    /// Field name from genxml (or the blitter table).
    pub name: &'static str,
    /// First dword of the field.
    pub dword: u16,
    /// Lowest address bit held.
    pub lo: u8,
    /// Highest address bit held (may exceed 31: the field spans two dwords).
    pub hi: u8,
    /// For repeated groups, dwords between elements; 0 for a single field.
    pub stride: u16,
    /// For repeated groups, the number of elements, 0 meaning "until the end of the command".
    pub count: u16,
    /// Which address space the field is in.
    pub space: AddrSel,
}

/// How a command selects the address space of an address field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSel {
    /// Always the global GTT.
    Ggtt,
    /// A bit of the command: when set the address is in `set`, when clear in the other space.
    Bit {
        /// Dword holding the bit.
        dword: u8,
        /// The bit.
        bit: u8,
        /// The space the bit selects when set.
        set: AddrSpace,
    },
    /// No selector: the context's default space (surfaces, state, URB stores).
    Context,
}

impl AddrSel {
    /// The space of the field in `cmd`, where `default` is the context's default space.
    pub fn resolve(self, cmd: &[u32], default: AddrSpace) -> AddrSpace {
        match self {
            AddrSel::Ggtt => AddrSpace::Ggtt,
            AddrSel::Context => default,
            AddrSel::Bit { dword, bit, set } => {
                let on = cmd.get(usize::from(dword)).is_some_and(|d| d >> bit & 1 != 0);
                match (on, set) {
                    (true, s) => s,
                    (false, AddrSpace::Ggtt) => default,
                    (false, AddrSpace::Ppgtt) => AddrSpace::Ggtt,
                }
            }
        }
    }
}

impl AddrField {
    /// The address this field holds for element `i` of `cmd`, or `None` when the command is too
    /// short to contain it.
    pub fn read(&self, cmd: &[u32], i: usize) -> Option<u64> {
        let dw = usize::from(self.dword).checked_add(usize::from(self.stride).checked_mul(i)?)?;
        let low = u64::from(*cmd.get(dw)?);
        let word = if self.hi > 31 { low | (u64::from(*cmd.get(dw.checked_add(1)?)?) << 32) } else { low };
        let width = u32::from(self.hi).checked_sub(u32::from(self.lo))?.checked_add(1)?;
        let mask = u64::MAX.checked_shr(64u32.saturating_sub(width)).unwrap_or(0);
        Some((word >> self.lo & mask) << self.lo)
    }

    /// Number of elements of this field present in a command of `len` dwords.
    pub fn elements(&self, len: usize) -> usize {
        let span = if self.hi > 31 { 2 } else { 1 };
        let first = usize::from(self.dword);
        if len < first + span {
            return 0;
        }
        match (self.stride, self.count) {
            (0, _) => 1,
            (s, 0) => (len - first - span) / usize::from(s) + 1,
            (s, n) => usize::from(n).min((len - first - span) / usize::from(s) + 1),
        }
    }
}

/// What the scanner does with a command beyond walking over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Length walk, plus the audit of genxml address fields when surfaces are GGTT-addressed.
    Generic,
    /// MI_USER_INTERRUPT: recorded and replaced by MI_NOOP.
    UserInterrupt,
    /// MI_WAIT_FOR_EVENT: display events never come to a vGPU without planes; replaced by MI_NOOP.
    WaitForEvent,
    /// MI_REPORT_HEAD: would write the host's status page; replaced by MI_NOOP.
    ReportHead,
    /// MI_BATCH_BUFFER_START.
    BbStart,
    /// MI_BATCH_BUFFER_END.
    BbEnd,
    /// MI_CONDITIONAL_BATCH_BUFFER_END.
    CondBbEnd,
    /// MI_LOAD_REGISTER_IMM.
    Lri,
    /// MI_LOAD_REGISTER_MEM.
    Lrm,
    /// MI_STORE_REGISTER_MEM.
    Srm,
    /// MI_LOAD_REGISTER_REG.
    Lrr,
    /// MI_STORE_DATA_IMM.
    StoreDataImm,
    /// MI_FLUSH_DW.
    FlushDw,
    /// PIPE_CONTROL.
    PipeControl,
    /// MI_ATOMIC.
    Atomic,
    /// MI_SEMAPHORE_WAIT.
    SemaphoreWait,
    /// MI_COPY_MEM_MEM.
    CopyMemMem,
    /// MI_REPORT_PERF_COUNT.
    ReportPerfCount,
    /// MI_LOAD_URB_MEM / MI_STORE_URB_MEM.
    UrbMem,
    /// MI_RS_STORE_DATA_IMM.
    RsStoreDataImm,
    /// A 2D blit.
    Blit(BlitKind),
    /// Never allowed in a vGPU's command stream.
    Reject(Rejection),
}

/// 2D commands whose surfaces the scanner can bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlitKind {
    /// XY_SRC_COPY_BLT (10 dwords on Gen8+).
    SrcCopy,
    /// XY_FAST_COPY_BLT (10 dwords).
    FastCopy,
    /// XY_COLOR_BLT (7 dwords on Gen8+).
    ColorFill,
    /// A legacy 2D command whose Gen8+ layout is not known: allowed only with PPGTT surfaces.
    Opaque,
}

/// Why a command is never allowed from a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// MI_SET_CONTEXT.
    SetContext,
    /// MI_UPDATE_GTT.
    UpdateGtt,
    /// MI_DISPLAY_FLIP.
    DisplayFlip,
    /// MI_LOAD_SCAN_LINES_INCL/EXCL.
    ScanLines,
    /// MI_STORE_DATA_INDEX.
    StoreDataIndex,
    /// MI_CLFLUSH.
    ClFlush,
}

impl Rejection {
    /// The reason given to the guest's owner.
    pub const fn reason(self) -> &'static str {
        match self {
            Rejection::SetContext => "legacy ring-buffer context switch; contexts are switched only by execlists",
            Rejection::UpdateGtt => "writes GTT entries directly; GTT updates go through the mediated GTT region",
            Rejection::DisplayFlip => "flips a display plane; the vGPU owns no display plane",
            Rejection::ScanLines => "programs display scan-line windows; the vGPU owns no pipe",
            Rejection::StoreDataIndex => "writes into the host engine's status page",
            Rejection::ClFlush => "flushes arbitrary cache lines; no guest driver needs it",
        }
    }
}

/// Where a descriptor came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Mesa genxml.
    Genxml,
    /// Linux GVT-g's command table (commands genxml lacks).
    Gvt,
    /// The 2D blitter table.
    Blitter,
}

/// One command: its encoding, length rule, engines, handler and address fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdDesc {
    /// Name as in the PRM / genxml.
    pub name: &'static str,
    /// Bits of dword 0 that identify the command.
    pub header_mask: u32,
    /// Their value.
    pub header_value: u32,
    /// Length rule.
    pub length: Length,
    /// Length in dwords of the command's usual form (genxml's template length; the minimum for
    /// commands genxml gives no template length).
    pub nominal: u16,
    /// Engines on which the command is valid.
    pub engines: EngineMask,
    /// What the scanner does with it.
    pub handler: Handler,
    /// Address fields (type `address` in genxml).
    pub addrs: &'static [AddrField],
    /// Provenance.
    pub source: Source,
}

include!(concat!(env!("OUT_DIR"), "/cmd_tables.rs"));

/// The command table of one generation.
#[derive(Clone, Copy, Debug)]
pub struct CommandTable {
    gen: Gen,
    descs: &'static [CmdDesc],
    mi: &'static [u32; 64],
    blt: &'static [u32; 128],
    render: &'static [u32; 8192],
    video: &'static [u32; 8192],
    vebox: &'static [u32; 8192],
}

static TABLE_GEN8: CommandTable = CommandTable {
    gen: Gen::Gen8,
    descs: &GEN8_DESCS,
    mi: &GEN8_MI,
    blt: &GEN8_BLT,
    render: &GEN8_RENDER,
    video: &GEN8_VIDEO,
    vebox: &GEN8_VEBOX,
};

static TABLE_GEN9: CommandTable = CommandTable {
    gen: Gen::Gen9,
    descs: &GEN9_DESCS,
    mi: &GEN9_MI,
    blt: &GEN9_BLT,
    render: &GEN9_RENDER,
    video: &GEN9_VIDEO,
    vebox: &GEN9_VEBOX,
};

/// Entry flag: a command that needs only a length walk when surfaces are PPGTT-addressed.
pub(crate) const ENTRY_FAST: u32 = 1 << 31;
/// Entry flag: the command has surfaces to audit when they are GGTT-addressed.
pub(crate) const ENTRY_GGTT_AUDIT: u32 = 1 << 30;
/// Entry flag: the length is `(dw0 & 0xff) + 2`.
pub(crate) const ENTRY_RULE_8_2: u32 = 1 << 29;
/// Entry flag: the length is `(dw0 & 0xfff) + 2`.
pub(crate) const ENTRY_RULE_12_2: u32 = 1 << 28;

/// Length in dwords from a packed decode-table entry and dword 0.
#[inline(always)]
fn entry_len(e: u32, dw0: u32) -> u32 {
    let code = e & 0x3fff;
    let n = (code >> 5) & 0xff;
    if code & (1 << 13) != 0 {
        n
    } else {
        (dw0 & ((1u32 << (code & 31)) - 1)) + n
    }
}

/// The decode table of the command type an engine runs most (3D/media/video state on RCS, VCS and
/// VECS; 2D on BCS), with what the walk's fast path needs to use it without further branches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastTable {
    /// The table.
    pub table: &'static [u32],
    /// Command type (bits 31:29) of the commands in it.
    pub ty: u32,
    /// Shift and mask of the key.
    pub shift: u32,
    /// Mask of the key after the shift.
    pub key_mask: u32,
    /// Mask of the DWord Length field shared by most of these commands (bias 2).
    pub len_mask: u32,
    /// The entry flag saying a command follows that length rule.
    pub rule: u32,
}

/// Result of decoding a header for an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A known command that is valid on the engine.
    Command(&'static CmdDesc),
    /// A known command that this engine does not execute.
    WrongEngine(&'static CmdDesc),
    /// Nothing in the table has this encoding for this engine.
    Unknown,
}

impl CommandTable {
    /// The table for a generation.
    pub fn for_gen(gen: Gen) -> &'static CommandTable {
        match gen {
            Gen::Gen8 => &TABLE_GEN8,
            Gen::Gen9 => &TABLE_GEN9,
        }
    }

    /// The generation this table describes.
    pub fn gen(&self) -> Gen {
        self.gen
    }

    /// Every descriptor.
    pub fn descriptors(&self) -> &'static [CmdDesc] {
        self.descs
    }

    /// The packed decode-table entry for `dw0` on `engine`: flags, `(index + 1) << 14`, length code.
    #[inline(always)]
    fn entry(&self, engine: Engine, dw0: u32) -> u32 {
        let slot = match dw0 >> 29 {
            0 => self.mi.get(((dw0 >> 23) & 0x3f) as usize),
            2 if engine == Engine::Bcs => self.blt.get(((dw0 >> 22) & 0x7f) as usize),
            3 => {
                let key = ((dw0 >> 16) & 0x1fff) as usize;
                match engine {
                    Engine::Rcs => self.render.get(key),
                    Engine::Vcs | Engine::Vcs2 => self.video.get(key),
                    Engine::Vecs => self.vebox.get(key),
                    Engine::Bcs => None,
                }
            }
            _ => None,
        };
        slot.copied().unwrap_or(0)
    }

    /// Decodes dword 0 of a command for `engine`.
    #[inline]
    pub fn decode(&self, engine: Engine, dw0: u32) -> Decoded {
        self.decode_with_len(engine, dw0).0
    }

    /// Decodes dword 0 and returns the command's length in dwords alongside. The length comes
    /// from the decode-table entry itself, so the walk to the next command does not wait for the
    /// descriptor load.
    #[inline(always)]
    pub fn decode_with_len(&self, engine: Engine, dw0: u32) -> (Decoded, u32) {
        let e = self.entry(engine, dw0);
        let len = entry_len(e, dw0);
        let Some(desc) = (((e >> 14) & 0x7ff) as usize).checked_sub(1).and_then(|i| self.descs.get(i)) else {
            return (Decoded::Unknown, len);
        };
        let d = if dw0 & desc.header_mask != desc.header_value {
            Decoded::Unknown
        } else if desc.engines.has(engine) {
            Decoded::Command(desc)
        } else {
            Decoded::WrongEngine(desc)
        };
        (d, len)
    }

    /// The fast-path table of `engine`.
    pub(crate) fn fast_table(&self, engine: Engine) -> FastTable {
        let three = |table: &'static [u32; 8192], len_mask, rule| FastTable {
            table,
            ty: 3,
            shift: 16,
            key_mask: 0x1fff,
            len_mask,
            rule,
        };
        match engine {
            Engine::Rcs => three(self.render, 0xff, ENTRY_RULE_8_2),
            Engine::Vcs | Engine::Vcs2 => three(self.video, 0xfff, ENTRY_RULE_12_2),
            Engine::Vecs => three(self.vebox, 0xfff, ENTRY_RULE_12_2),
            Engine::Bcs => {
                FastTable { table: self.blt, ty: 2, shift: 22, key_mask: 0x7f, len_mask: 0xff, rule: ENTRY_RULE_8_2 }
            }
        }
    }

    /// Looks a descriptor up by name.
    pub fn by_name(&self, name: &str) -> Option<&'static CmdDesc> {
        self.descs.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen9() -> &'static CommandTable {
        CommandTable::for_gen(Gen::Gen9)
    }

    #[test]
    fn known_headers_decode() {
        let t = gen9();
        let cases: &[(Engine, u32, &str, u32)] = &[
            (Engine::Rcs, 0x1880_0001, "MI_BATCH_BUFFER_START", 3),
            (Engine::Rcs, 0x1100_0001, "MI_LOAD_REGISTER_IMM", 3),
            (Engine::Rcs, 0x7a00_0004, "PIPE_CONTROL", 6),
            (Engine::Rcs, 0x7b00_0005, "3DPRIMITIVE", 7),
            (Engine::Rcs, 0x6101_0011, "STATE_BASE_ADDRESS", 19),
            (Engine::Bcs, 0x54c0_0008, "XY_SRC_COPY_BLT", 10),
            (Engine::Bcs, 0x5080_0008, "XY_FAST_COPY_BLT", 10),
            (Engine::Bcs, 0x1300_0003, "MI_FLUSH_DW", 5),
            (Engine::Vecs, 0x7402_0000, "VEBOX_STATE", 2),
            (Engine::Vcs, 0x1000_0002, "MI_STORE_DATA_IMM", 4),
        ];
        for &(engine, dw0, name, len) in cases {
            match t.decode(engine, dw0) {
                Decoded::Command(d) => {
                    assert_eq!(d.name, name, "{dw0:#x}");
                    assert_eq!(d.length.of(dw0), len, "{name}");
                }
                other => panic!("{dw0:#x} on {engine}: {other:?}"),
            }
        }
    }

    #[test]
    fn engine_rules() {
        let t = gen9();
        // PIPE_CONTROL is render only; type 3 does not exist on the blitter.
        assert_eq!(t.decode(Engine::Bcs, 0x7a00_0004), Decoded::Unknown);
        assert!(matches!(t.decode(Engine::Vcs, 0x7a00_0004), Decoded::Unknown | Decoded::WrongEngine(_)));
        // 2D commands are blitter only.
        assert_eq!(t.decode(Engine::Rcs, 0x54c0_0008), Decoded::Unknown);
        // MI_URB_ATOMIC_ALLOC is render only.
        assert!(matches!(t.decode(Engine::Bcs, 0x0480_0000), Decoded::WrongEngine(_)));
    }

    #[test]
    fn address_selectors() {
        let t = gen9();
        let sdi = t.by_name("MI_STORE_DATA_IMM").unwrap().addrs[0];
        assert_eq!(sdi.space.resolve(&[0x1040_0002, 0, 0, 0], AddrSpace::Ppgtt), AddrSpace::Ggtt);
        assert_eq!(sdi.space.resolve(&[0x1000_0002, 0, 0, 0], AddrSpace::Ppgtt), AddrSpace::Ppgtt);
        let bbs = t.by_name("MI_BATCH_BUFFER_START").unwrap().addrs[0];
        assert_eq!(bbs.space.resolve(&[0x1880_0101, 0, 0], AddrSpace::Ppgtt), AddrSpace::Ppgtt);
        assert_eq!(bbs.space.resolve(&[0x1880_0001, 0, 0], AddrSpace::Ppgtt), AddrSpace::Ggtt);
        let pc = t.by_name("PIPE_CONTROL").unwrap().addrs[0];
        assert_eq!(pc.space.resolve(&[0x7a00_0004, 1 << 24, 0, 0, 0, 0], AddrSpace::Ppgtt), AddrSpace::Ggtt);
        let cmm = t.by_name("MI_COPY_MEM_MEM").unwrap();
        let spaces: Vec<_> = cmm.addrs.iter().map(|f| f.space.resolve(&[0x1760_0003], AddrSpace::Ppgtt)).collect();
        assert_eq!(spaces, vec![AddrSpace::Ggtt, AddrSpace::Ggtt]);
        let sba = t.by_name("STATE_BASE_ADDRESS").unwrap().addrs[0];
        assert_eq!(sba.space, AddrSel::Context);
    }

    #[test]
    fn video_families_present_on_gen9() {
        let t = gen9();
        for prefix in ["HCP_", "HUC_", "VDENC_", "SFC_", "VD_PIPELINE_FLUSH"] {
            let d = t.descriptors().iter().find(|d| d.name.starts_with(prefix)).unwrap();
            assert!(
                matches!(t.decode(Engine::Vcs, d.header_value), Decoded::Command(x) if x.name == d.name),
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn addr_field_reads_split_fields() {
        let f = AddrField { name: "a", dword: 1, lo: 2, hi: 47, stride: 0, count: 1, space: AddrSel::Context };
        let cmd = [0u32, 0xdead_beef, 0xffff_1234];
        assert_eq!(f.read(&cmd, 0), Some(0x1234_dead_beec));
        assert_eq!(f.read(&cmd[..2], 0), None);
        assert_eq!(f.elements(3), 1);
        assert_eq!(f.elements(2), 0);
        let g = AddrField { name: "g", dword: 2, lo: 0, hi: 63, stride: 4, count: 0, space: AddrSel::Context };
        assert_eq!(g.elements(2 + 4 * 3), 3);
        assert_eq!(g.elements(2 + 4 * 3 + 2), 4);
    }
}
