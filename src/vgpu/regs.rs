//! The BAR0 register file of a vGPU: a per-platform table of tracked registers (what each one
//! does, its read-only bits, whether it is a masked register, its value at reset) and the per-vGPU
//! register values ("vregs").
//!
//! Lookups are one array index per access: a probing guest driver makes tens of thousands of
//! forcewake requests and ack polls, and each must stay a few nanoseconds of table work.
//! Registers outside the table read back what was written (zero at reset) and are recorded, so the
//! table can be completed from the evidence of real guests ([`RegState::unknown`]).

use std::sync::OnceLock;

use crate::hw::reg::{self, ring};
use crate::hw::{Device, Engine, Gen, GtLevel, Platform};

/// Dwords in the register part of BAR0.
const DWORDS: usize = (reg::MMIO_SIZE / 4) as usize;

/// A per-engine register with behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingReg {
    /// ELSP: the submission port.
    Elsp,
    /// EXECLIST_STATUS and the CSB entries: read from the virtual execlist.
    Execlist,
    /// The CSB pointer register: read from and written to the virtual execlist.
    CsbPtr,
    /// The status page address.
    HwsPga,
    /// MI_MODE: MODE_IDLE follows STOP_RING.
    MiMode,
    /// RESET_CTL: READY_TO_RESET follows the request.
    ResetCtl,
    /// RING_MODE: execlist and PPGTT enables (PV contract checked).
    RingMode,
    /// TIMESTAMP low dword.
    Timestamp,
    /// TIMESTAMP high dword.
    TimestampUdw,
}

/// What a tracked register does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Storage.
    Plain,
    /// A forcewake request: its low half is mirrored into the ack register.
    Forcewake {
        /// The ack register.
        ack: u32,
    },
    /// A per-engine register with behaviour.
    Ring(Engine, RingReg),
    /// GDRST: engine and device resets, complete at once.
    Gdrst,
    /// A TLB invalidation request, complete at once.
    TlbInvalidate,
    /// The PCODE mailbox: requests answered at once.
    PcodeMailbox,
    /// GUC_STATUS: reports the microcontroller in reset once.
    GucStatus,
    /// A power-well control register: each odd request bit acknowledged in the even bit below it.
    PowerWell,
    /// A request bit acknowledged by a state bit.
    RequestAck {
        /// Request bit.
        request: u32,
        /// State bit.
        ack: u32,
    },
    /// Writes have no effect (flush triggers).
    Discard,
    /// A DP AUX channel with nothing attached: a transaction completes at once with a timeout.
    AuxChannel,
    /// An interrupt identity register outside the interrupt tree: write one to clear.
    WriteOneToClear,
    /// A command register whose `bits` (busy, error) read clear as soon as it is written: the
    /// command completed successfully at once.
    CompletesAtOnce {
        /// Bits cleared after every write.
        bits: u32,
    },
}

/// One tracked register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegInfo {
    /// Behaviour.
    pub kind: Kind,
    /// Masked register: bits 31:16 of a write select which of bits 15:0 change.
    pub masked: bool,
    /// Bits the guest cannot change.
    pub ro_mask: u32,
    /// Value at reset.
    pub default: u32,
}

const fn info(kind: Kind) -> RegInfo {
    RegInfo { kind, masked: false, ro_mask: 0, default: 0 }
}

/// A status register the guest cannot change, reading `default`.
const fn read_only(default: u32) -> RegInfo {
    RegInfo { ro_mask: u32::MAX, default, ..info(Kind::Plain) }
}

/// The table of one platform.
#[derive(Debug)]
pub struct RegTable {
    /// Per dword: 0 for untracked, else index + 1 into `regs`.
    index: Vec<u16>,
    regs: Vec<RegInfo>,
    /// `(offset, value)` of the registers whose reset value is not zero, by offset.
    defaults: Vec<(u32, u32)>,
}

impl RegTable {
    /// The table of `device`'s platform and GT level (built once, shared by every vGPU).
    pub fn get(device: &Device) -> &'static RegTable {
        static TABLES: [[OnceLock<RegTable>; 4]; 5] = [const { [const { OnceLock::new() }; 4] }; 5];
        let p = Platform::ALL.iter().position(|&p| p == device.platform).unwrap_or(0);
        let g = device.gt as usize;
        match TABLES.get(p).and_then(|t| t.get(g)) {
            Some(cell) => cell.get_or_init(|| RegTable::build(device)),
            // Unreachable (every platform and GT level has a cell); a fresh table keeps it total.
            None => Box::leak(Box::new(RegTable::build(device))),
        }
    }

    /// The register at `off` (dword aligned), if tracked.
    #[inline]
    pub fn lookup(&self, off: u32) -> Option<&RegInfo> {
        let i = *self.index.get((off / 4) as usize)?;
        self.regs.get(usize::from(i).checked_sub(1)?)
    }

    /// Number of tracked registers.
    pub fn len(&self) -> usize {
        self.regs.len()
    }

    /// Whether the table is empty (never, for a real platform).
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    /// `(offset, value)` of every register whose reset value is not zero.
    pub fn defaults(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.defaults.iter().copied()
    }

    fn add(&mut self, off: u32, r: RegInfo) {
        let Some(slot) = self.index.get_mut((off / 4) as usize) else { return };
        if *slot != 0 {
            // First definition wins: handlers are added before the plain ranges.
            return;
        }
        self.regs.push(r);
        *slot = self.regs.len() as u16;
    }

    fn plain_range(&mut self, range: std::ops::Range<u32>) {
        for off in range.step_by(4) {
            self.add(off, info(Kind::Plain));
        }
    }

    fn build(device: &Device) -> RegTable {
        let mut t = RegTable { index: vec![0; DWORDS], regs: Vec::new(), defaults: Vec::new() };
        let gen = device.platform.gen();
        let masked = |kind| RegInfo { masked: true, ..info(kind) };
        let fw = |ack| masked(Kind::Forcewake { ack });
        t.add(reg::FORCEWAKE_MT, fw(reg::FORCEWAKE_ACK_GT));
        t.add(reg::FORCEWAKE_ACK_GT, read_only(0));
        if gen == Gen::Gen9 {
            t.add(reg::FORCEWAKE_RENDER, fw(reg::FORCEWAKE_ACK_RENDER));
            t.add(reg::FORCEWAKE_MEDIA, fw(reg::FORCEWAKE_ACK_MEDIA));
            t.add(reg::FORCEWAKE_ACK_RENDER, read_only(0));
            t.add(reg::FORCEWAKE_ACK_MEDIA, read_only(0));
        }
        for e in Engine::ALL.into_iter().filter(|&e| device.has_engine(e)) {
            let b = e.mmio_base();
            let r = |x| Kind::Ring(e, x);
            t.add(b + crate::execlist::reg::ELSP, info(r(RingReg::Elsp)));
            for off in [crate::execlist::reg::STATUS_LO, crate::execlist::reg::STATUS_HI] {
                t.add(b + off, info(r(RingReg::Execlist)));
            }
            for i in 0..12 {
                t.add(b + crate::execlist::reg::CSB + 4 * i, info(r(RingReg::Execlist)));
            }
            t.add(b + crate::execlist::reg::CSB_PTR, info(r(RingReg::CsbPtr)));
            t.add(b + ring::HWS_PGA, info(r(RingReg::HwsPga)));
            t.add(b + ring::MI_MODE, RegInfo { ro_mask: ring::MODE_IDLE, ..masked(r(RingReg::MiMode)) });
            t.add(b + ring::RESET_CTL, RegInfo { ro_mask: ring::READY_TO_RESET, ..masked(r(RingReg::ResetCtl)) });
            t.add(b + ring::RING_MODE, masked(r(RingReg::RingMode)));
            t.add(b + ring::TIMESTAMP, info(r(RingReg::Timestamp)));
            t.add(b + ring::TIMESTAMP_UDW, info(r(RingReg::TimestampUdw)));
            t.add(b + ring::IMR, RegInfo { default: u32::MAX, ..info(Kind::Plain) });
            t.add(b + ring::HWSTAM, RegInfo { default: u32::MAX, ..info(Kind::Plain) });
            t.plain_range(b..b + ring::BLOCK_END);
        }
        t.add(reg::GDRST, info(Kind::Gdrst));
        for i in 0..5 {
            t.add(reg::TLB_INVALIDATE_RCS + 4 * i, info(Kind::TlbInvalidate));
        }
        t.add(reg::PCODE_MAILBOX, info(Kind::PcodeMailbox));
        t.add(reg::PCODE_DATA, info(Kind::Plain));
        t.add(reg::PCODE_DATA1, info(Kind::Plain));
        t.add(reg::GUC_STATUS, RegInfo { default: reg::GUC_MIA_IN_RESET, ..info(Kind::GucStatus) });
        t.add(reg::GT_THREAD_STATUS, read_only(0));
        t.add(reg::GT_CORE_STATUS, read_only(0));
        t.add(reg::GFX_FLSH_CNTL, info(Kind::Discard));
        for (off, v) in fuses(device) {
            t.add(off, read_only(v));
        }
        // Display power and clocks: requests acknowledged so a modeset path finds them done.
        for i in 0..4 {
            t.add(reg::PWR_WELL_CTL1 + 4 * i, info(Kind::PowerWell));
        }
        // No display is attached: AUX transactions time out at once, PSR interrupts clear.
        for port in 0..4 {
            t.add(reg::DP_AUX_CH_CTL_A + 0x100 * port, info(Kind::AuxChannel));
        }
        t.add(reg::EDP_PSR_IMR, RegInfo { default: u32::MAX, ..info(Kind::Plain) });
        t.add(reg::EDP_PSR_IIR, info(Kind::WriteOneToClear));
        // The PCH sideband (Broadwell's clock set-up): SBI_ADDR and SBI_DATA are storage.
        t.add(reg::SBI_CTL_STAT - 8, info(Kind::Plain));
        t.add(reg::SBI_CTL_STAT - 4, info(Kind::Plain));
        t.add(reg::SBI_CTL_STAT, info(Kind::CompletesAtOnce { bits: reg::SBI_BUSY | reg::SBI_RESPONSE_FAIL }));
        match gen {
            Gen::Gen9 => {
                let st = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25);
                t.add(reg::SKL_FUSE_STATUS, read_only(st));
                let req_ack = Kind::RequestAck { request: 1 << 31, ack: 1 << 30 };
                t.add(reg::DBUF_CTL, RegInfo { ro_mask: 1 << 30, ..info(req_ack) });
                t.add(reg::LCPLL1_CTL, RegInfo { ro_mask: 1 << 30, default: 0xc000_0000, ..info(req_ack) });
                // CTC_MODE: crystal source, shift 1: a 12 MHz command-streamer timestamp.
                t.add(0xa26c, RegInfo { default: 0x2, ..info(Kind::Plain) });
            }
            Gen::Gen8 => {
                let lcpll = Kind::RequestAck { request: 0, ack: 0 };
                t.add(reg::LCPLL_CTL, RegInfo { ro_mask: 1 << 30, default: 1 << 30, ..info(lcpll) });
            }
        }
        // Registers command streams may touch, and those switched per vGPU: storage.
        for r in crate::cmd::regs::global_ranges() {
            t.plain_range(r);
        }
        for e in Engine::ALL {
            for s in crate::sched::regs::switched(gen, e) {
                t.add(s.reg, RegInfo { masked: s.masked, ..info(Kind::Plain) });
            }
        }
        t.plain_range(0x24d0..0x2500); // FORCE_NONPRIV
        t.plain_range(0x4000..0x4100); // GAM / PPAT / fault registers
        t.defaults = t
            .index
            .iter()
            .enumerate()
            .filter_map(|(dw, &i)| {
                let r = t.regs.get(usize::from(i).checked_sub(1)?)?;
                (r.default != 0).then_some((dw as u32 * 4, r.default))
            })
            .collect();
        t
    }
}

/// GT fuses describing the slice/subslice/EU topology of `device`: `(offset, value)`.
fn fuses(device: &Device) -> Vec<(u32, u32)> {
    // Slices enabled, subslices disabled (of 3 on Gen8, 4 on Gen9), EUs disabled per subslice.
    let (slices, ss_dis, eu_dis): (u32, u32, u32) = match (device.platform.gen(), device.gt) {
        (Gen::Gen8, GtLevel::Gt1) => (0b1, 0b100, 0),
        (Gen::Gen8, GtLevel::Gt2) => (0b1, 0, 0),
        (Gen::Gen8, _) => (0b11, 0, 0),
        (Gen::Gen9, GtLevel::Gt1) => (0b1, 0b1100, 0xc0c0),
        (Gen::Gen9, GtLevel::Gt2) => (0b1, 0b1000, 0),
        (Gen::Gen9, GtLevel::Gt3) => (0b11, 0b1000, 0),
        (Gen::Gen9, GtLevel::Gt4) => (0b111, 0b1000, 0),
    };
    let ss_shift = if device.platform.gen() == Gen::Gen8 { 21 } else { 20 };
    let mut v = vec![(reg::FUSE2, slices << 25 | ss_dis << ss_shift)];
    for s in 0..3 {
        v.push((reg::EU_DISABLE0 + 4 * s, if slices & (1 << s) != 0 { eu_dis } else { u32::MAX }));
    }
    v
}

/// Why a vGPU entered failsafe mode: the guest broke the paravirtual contract. In failsafe mode
/// registers and the GTT are plain storage and nothing is submitted, until a device reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failsafe {
    /// The guest did not read PVINFO before enabling PPGTT or execlists, or set forbidden mode bits.
    #[error("unsupported guest: {0}")]
    UnsupportedGuest(&'static str),
    /// The guest wrote PVINFO's reserved "insufficient resource" field.
    #[error("guest reported insufficient resources")]
    InsufficientResource,
}

/// A set of dword offsets (one bit each over the register part of BAR0).
#[derive(Clone, Debug)]
struct DwordSet(Vec<u64>);

impl DwordSet {
    fn new() -> Self {
        DwordSet(vec![0; DWORDS / 64])
    }

    fn insert(&mut self, off: u32) {
        let dw = (off / 4) as usize;
        if let Some(w) = self.0.get_mut(dw / 64) {
            *w |= 1 << (dw % 64);
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| ((i * 64 + b) * 4) as u32))
    }
}

/// A register the guest touched that the model does not track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownReg {
    /// BAR0 offset.
    pub offset: u32,
    /// Read at least once.
    pub read: bool,
    /// Written at least once.
    pub written: bool,
    /// The last value written (or the reset value).
    pub value: u32,
}

/// One vGPU's register values.
#[derive(Debug)]
pub struct RegState {
    table: &'static RegTable,
    vregs: Vec<u32>,
    unknown_read: DwordSet,
    unknown_written: DwordSet,
}

impl RegState {
    /// Registers at their reset values.
    pub fn new(table: &'static RegTable) -> Self {
        let mut s =
            RegState { table, vregs: vec![0; DWORDS], unknown_read: DwordSet::new(), unknown_written: DwordSet::new() };
        s.reset(0, reg::MMIO_SIZE);
        s
    }

    /// The table.
    pub fn table(&self) -> &'static RegTable {
        self.table
    }

    /// Returns the registers in `[from, to)` to their reset values.
    pub fn reset(&mut self, from: u32, to: u32) {
        let (a, b) = ((from / 4) as usize, (to / 4) as usize);
        if let Some(s) = self.vregs.get_mut(a..b.min(DWORDS)) {
            s.fill(0);
        }
        for (off, v) in self.table.defaults() {
            if (from..to).contains(&off) {
                self.set(off, v);
            }
        }
    }

    /// The value of the dword at `off`.
    #[inline]
    pub fn get(&self, off: u32) -> u32 {
        self.vregs.get((off / 4) as usize).copied().unwrap_or(0)
    }

    /// Sets the dword at `off`.
    #[inline]
    pub fn set(&mut self, off: u32, v: u32) {
        if let Some(r) = self.vregs.get_mut((off / 4) as usize) {
            *r = v;
        }
    }

    /// Notes an access to an untracked register.
    pub fn note_unknown(&mut self, off: u32, write: bool) {
        if write {
            self.unknown_written.insert(off);
        } else {
            self.unknown_read.insert(off);
        }
    }

    /// The untracked registers the guest touched, by offset.
    pub fn unknown(&self) -> Vec<UnknownReg> {
        let mut m = std::collections::BTreeMap::new();
        for off in self.unknown_read.iter() {
            m.entry(off).or_insert((false, false)).0 = true;
        }
        for off in self.unknown_written.iter() {
            m.entry(off).or_insert((false, false)).1 = true;
        }
        m.into_iter()
            .map(|(offset, (read, written))| UnknownReg { offset, read, written, value: self.get(offset) })
            .collect()
    }
}

/// The value a write of `value` leaves in a register holding `old`: masked-write and read-only
/// semantics applied.
#[inline]
pub fn merge(info: &RegInfo, old: u32, value: u32) -> u32 {
    let new = if info.masked {
        let sel = value >> 16;
        ((old & !sel) | (value & sel)) & 0xffff
    } else {
        value
    };
    (new & !info.ro_mask) | (old & info.ro_mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skl() -> &'static RegTable {
        RegTable::get(&Platform::Skylake.default_device())
    }

    #[test]
    fn table_knows_the_hot_registers() {
        let t = skl();
        assert!(matches!(t.lookup(reg::FORCEWAKE_RENDER).map(|r| r.kind), Some(Kind::Forcewake { ack: 0xd84 })));
        assert!(matches!(t.lookup(0x2230).map(|r| r.kind), Some(Kind::Ring(Engine::Rcs, RingReg::Elsp))));
        assert!(matches!(t.lookup(0x22370).map(|r| r.kind), Some(Kind::Ring(Engine::Bcs, RingReg::Execlist))));
        assert_eq!(t.lookup(0x1c230), None, "no VCS2 on GT2");
        assert_eq!(t.lookup(0x12_3450), None);
        assert!(t.len() > 1000, "{} registers", t.len());
        let bdw = RegTable::get(&Platform::Broadwell.default_device());
        assert_eq!(bdw.lookup(reg::FORCEWAKE_RENDER), None, "no per-domain forcewake on Gen8");
    }

    #[test]
    fn masked_and_read_only_merge() {
        let m = RegInfo { ro_mask: 1 << 9, ..RegInfo { masked: true, ..info(Kind::Plain) } };
        assert_eq!(merge(&m, 0x0000, 0x0101_0101), 0x0101);
        assert_eq!(merge(&m, 0x0101, 0x0100_0000), 0x0001);
        assert_eq!(merge(&m, 0x0000, 0x0200_0200), 0, "bit 9 read only");
        assert_eq!(merge(&info(Kind::Plain), 7, 0xdead_beef), 0xdead_beef);
    }

    #[test]
    fn topology_fuses_per_gt() {
        let s = RegState::new(skl());
        assert_eq!(s.get(reg::FUSE2), 1 << 25 | 0b1000 << 20, "1 slice, subslice 3 fused off");
        assert_eq!(s.get(reg::EU_DISABLE0), 0);
        assert_eq!(s.get(reg::EU_DISABLE0 + 4), u32::MAX, "slice 1 absent");
        assert_eq!(s.get(0x2000 + ring::IMR), u32::MAX);
        assert_eq!(s.get(reg::GUC_STATUS), reg::GUC_MIA_IN_RESET);
    }

    #[test]
    fn unknown_registers_are_listed() {
        let mut s = RegState::new(skl());
        s.note_unknown(0x12_3450, false);
        s.note_unknown(0x12_3450, true);
        s.set(0x12_3450, 9);
        s.note_unknown(0x4, false);
        let u = s.unknown();
        assert_eq!(
            u,
            vec![
                UnknownReg { offset: 0x4, read: true, written: false, value: 0 },
                UnknownReg { offset: 0x12_3450, read: true, written: true, value: 9 },
            ]
        );
    }
}
