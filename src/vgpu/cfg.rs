//! The vGPU's PCI configuration space (256 bytes, type 0 header): an Intel display controller at
//! 00:02.0 with a 64-bit register BAR, a 64-bit prefetchable aperture BAR, an I/O BAR, MSI and
//! power-management capabilities, and the graphics registers a driver reads from config space
//! (GMCH control, stolen-memory base, OpRegion address, SWSCI).
//!
//! Writes follow a per-byte writable mask, as hardware does; BARs answer sizing probes with their
//! size; status bits are write-one-to-clear.

use crate::hw::Device;

/// Size of the configuration space.
pub const CFG_SIZE: usize = 256;

/// Offsets of the registers with meaning.
pub mod off {
    /// Vendor ID.
    pub const VENDOR: usize = 0x00;
    /// Device ID.
    pub const DEVICE: usize = 0x02;
    /// Command.
    pub const COMMAND: usize = 0x04;
    /// Status.
    pub const STATUS: usize = 0x06;
    /// Revision ID.
    pub const REVISION: usize = 0x08;
    /// Class code (3 bytes, prog-if first).
    pub const CLASS: usize = 0x09;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// BAR0 (GTTMMADR), 64-bit: registers and GTT.
    pub const BAR0: usize = 0x10;
    /// BAR2 (GMADR), 64-bit prefetchable: the aperture.
    pub const BAR2: usize = 0x18;
    /// BAR4 (IOBAR).
    pub const BAR4: usize = 0x20;
    /// Subsystem vendor ID.
    pub const SUBSYS_VENDOR: usize = 0x2c;
    /// Subsystem ID.
    pub const SUBSYS_ID: usize = 0x2e;
    /// Expansion ROM BAR (none).
    pub const ROM: usize = 0x30;
    /// Capability pointer.
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line.
    pub const INT_LINE: usize = 0x3c;
    /// Interrupt pin.
    pub const INT_PIN: usize = 0x3d;
    /// GMCH graphics control (GGC): stolen size and GTT size.
    pub const GGC: usize = 0x50;
    /// Base of data stolen memory (BDSM).
    pub const BDSM: usize = 0x5c;
    /// MSI capability.
    pub const MSI_CAP: usize = 0xac;
    /// Power-management capability.
    pub const PM_CAP: usize = 0xd0;
    /// PMCSR (power state in bits 1:0).
    pub const PMCSR: usize = PM_CAP + 4;
    /// SWSCI: software SCI to the (virtual) system BIOS.
    pub const SWSCI: usize = 0xe8;
    /// ASLS: guest physical address of the OpRegion.
    pub const ASLS: usize = 0xfc;
}

/// Size of the I/O BAR.
pub const BAR4_SIZE: u64 = 64;

/// Command register bits the guest may set: I/O, memory, bus master, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0407;
/// Status bits that are write-one-to-clear (parity, aborts, SERR).
const STATUS_RW1C: u16 = 0xf900;

/// What changed through a configuration write, for the device to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CfgEffects {
    /// The power state became D3hot.
    pub entered_d3: bool,
    /// The guest triggered a SWSCI request (SCI selected, trigger bit set).
    pub swsci: bool,
}

/// One vGPU's configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: [u8; CFG_SIZE],
    writable: [u8; CFG_SIZE],
    initial: [u8; CFG_SIZE],
    bar0_size: u64,
    bar2_size: u64,
}

fn put(b: &mut [u8; CFG_SIZE], at: usize, v: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + v.len()) {
        dst.copy_from_slice(v);
    }
}

/// The GGMS field (GGC bits 7:6) for a GGTT of `ggtt_bytes` of address space: 1, 2 or 3 for 2, 4
/// or 8 MiB of 8-byte entries.
pub fn ggms(ggtt_bytes: u64) -> u16 {
    let pte_mib = (ggtt_bytes >> 12).saturating_mul(8) >> 20;
    match pte_mib {
        0..=2 => 1,
        3..=4 => 2,
        _ => 3,
    }
}

impl ConfigSpace {
    /// The configuration space of a vGPU presenting `device`, with a `bar0_size` register BAR, a
    /// `bar2_size` aperture and a GGTT of `ggtt_bytes`.
    pub fn new(device: &Device, revision: u8, bar0_size: u64, bar2_size: u64, ggtt_bytes: u64) -> Self {
        let mut b = [0u8; CFG_SIZE];
        put(&mut b, off::VENDOR, &0x8086u16.to_le_bytes());
        put(&mut b, off::DEVICE, &device.id.to_le_bytes());
        put(&mut b, off::STATUS, &0x0010u16.to_le_bytes()); // capability list
        put(&mut b, off::REVISION, &[revision]);
        put(&mut b, off::CLASS, &[0x00, 0x00, 0x03]); // VGA-compatible display controller
        put(&mut b, off::BAR0, &0x4u32.to_le_bytes()); // 64-bit memory
        put(&mut b, off::BAR2, &0xcu32.to_le_bytes()); // 64-bit prefetchable memory
        put(&mut b, off::BAR4, &0x1u32.to_le_bytes()); // I/O
        put(&mut b, off::SUBSYS_VENDOR, &0x8086u16.to_le_bytes());
        put(&mut b, off::SUBSYS_ID, &device.id.to_le_bytes());
        put(&mut b, off::CAP_PTR, &[off::MSI_CAP as u8]);
        put(&mut b, off::INT_LINE, &[0xff]);
        put(&mut b, off::INT_PIN, &[0x01]);
        // No stolen memory (GMS = 0), the GTT size, and the lock bit: the register is read only.
        put(&mut b, off::GGC, &(ggms(ggtt_bytes) << 6 | 1).to_le_bytes());
        // MSI: next = PM, single message, 32-bit address.
        put(&mut b, off::MSI_CAP, &[0x05, off::PM_CAP as u8, 0x00, 0x00]);
        // PM: end of list, version 2 with D1/D2 unsupported; No_Soft_Reset so D3->D0 keeps state.
        put(&mut b, off::PM_CAP, &[0x01, 0x00, 0x22, 0x00]);
        put(&mut b, off::PMCSR, &0x0008u16.to_le_bytes());

        let mut w = [0u8; CFG_SIZE];
        put(&mut w, off::COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        for bar in [off::BAR0, off::BAR2] {
            put(&mut w, bar, &[0xff; 8]);
        }
        put(&mut w, off::BAR4, &[0xff; 4]);
        put(&mut w, off::INT_LINE, &[0xff]);
        // Device-specific space is plain storage for the guest, except the capability headers and
        // the read-only graphics registers.
        for i in 0x40..CFG_SIZE {
            if let Some(x) = w.get_mut(i) {
                *x = 0xff;
            }
        }
        put(&mut w, off::GGC, &[0, 0]);
        put(&mut w, off::BDSM, &[0; 4]);
        put(&mut w, off::MSI_CAP, &[0x00, 0x00, 0x71, 0x00]); // enable + MME
        put(&mut w, off::MSI_CAP + 4, &[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00]);
        put(&mut w, off::PM_CAP, &[0; 4]);
        put(&mut w, off::PMCSR, &[0x03, 0x00, 0x00, 0x00]);
        ConfigSpace { bytes: b, writable: w, initial: b, bar0_size, bar2_size }
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset.checked_add(i).and_then(|o| self.bytes.get(o)).copied().unwrap_or(0);
        }
    }

    /// A dword at `offset` (zero outside).
    pub fn dword(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes `data` at `offset` with hardware semantics; bytes past the end are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> CfgEffects {
        let mut fx = CfgEffects::default();
        let old_pm = self.dword(off::PMCSR) & 3;
        let old_swsci = self.dword(off::SWSCI);
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i) else { break };
            let (Some(cur), Some(&mask)) = (self.bytes.get(o).copied(), self.writable.get(o)) else { break };
            let mut new = (cur & !mask) | (v & mask);
            if (off::STATUS..off::STATUS + 2).contains(&o) {
                let rw1c = STATUS_RW1C.to_le_bytes().get(o - off::STATUS).copied().unwrap_or(0);
                new = cur & !(v & rw1c);
            }
            if let Some(b) = self.bytes.get_mut(o) {
                *b = new;
            }
        }
        self.fix_bars();
        // MSI: single message only (MME stays 0).
        if let Some(ctl) = self.bytes.get_mut(off::MSI_CAP + 2) {
            *ctl &= 0x01;
        }
        let pm = self.dword(off::PMCSR) & 3;
        if pm == 2 || pm == 1 {
            // D1/D2 unsupported: the state stays as it was.
            if let Some(b) = self.bytes.get_mut(off::PMCSR) {
                *b = (*b & !3) | old_pm as u8;
            }
        }
        fx.entered_d3 = pm == 3 && old_pm != 3;
        let swsci = self.dword(off::SWSCI);
        fx.swsci = swsci & (1 << 15) != 0 && swsci & 1 != 0 && old_swsci & 1 == 0;
        fx
    }

    /// Clears the SWSCI trigger bit (the request has been served).
    pub fn swsci_done(&mut self) {
        if let Some(b) = self.bytes.get_mut(off::SWSCI) {
            *b &= !1;
        }
    }

    /// Masks the BARs' address bits to their sizes and restores their type bits.
    fn fix_bars(&mut self) {
        for (at, size, flags) in [(off::BAR0, self.bar0_size, 0x4u64), (off::BAR2, self.bar2_size, 0xc)] {
            let v = u64::from(self.dword(at)) | u64::from(self.dword(at + 4)) << 32;
            let v = (v & !(size.saturating_sub(1)) & !0xf) | flags;
            put(&mut self.bytes, at, &v.to_le_bytes());
        }
        let io = (self.dword(off::BAR4) & !(BAR4_SIZE as u32 - 1)) | 1;
        put(&mut self.bytes, off::BAR4, &io.to_le_bytes());
    }

    /// The guest physical address of the OpRegion (ASLS), 0 if unset.
    pub fn asls(&self) -> u64 {
        u64::from(self.dword(off::ASLS))
    }

    /// Whether memory decoding is enabled.
    pub fn memory_enabled(&self) -> bool {
        self.dword(off::COMMAND) & 2 != 0
    }

    /// Whether MSI is enabled in the capability.
    pub fn msi_enabled(&self) -> bool {
        self.dword(off::MSI_CAP) & (1 << 16) != 0
    }

    /// The guest-programmed base of BAR `index` (0 or 2), without the type bits.
    pub fn bar_base(&self, index: usize) -> u64 {
        let at = match index {
            0 => off::BAR0,
            2 => off::BAR2,
            _ => return 0,
        };
        (u64::from(self.dword(at)) | u64::from(self.dword(at + 4)) << 32) & !0xf
    }

    /// Returns every byte to its state at creation (device reset).
    pub fn reset(&mut self) {
        self.bytes = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Platform;

    fn space() -> ConfigSpace {
        ConfigSpace::new(&Platform::Skylake.default_device(), 7, 16 << 20, 256 << 20, 4 << 30)
    }

    fn w32(c: &mut ConfigSpace, at: usize, v: u32) -> CfgEffects {
        c.write(at, &v.to_le_bytes())
    }

    #[test]
    fn identity_class_and_caps() {
        let c = space();
        assert_eq!(c.dword(0), 0x1912_8086);
        assert_eq!(c.dword(0x08) >> 8, 0x03_0000);
        assert_eq!(c.dword(off::SUBSYS_VENDOR), 0x1912_8086);
        // Capability list: MSI then PM then end.
        let first = c.dword(off::CAP_PTR) as usize & 0xff;
        assert_eq!(c.dword(first) & 0xff, 0x05);
        let next = (c.dword(first) >> 8) as usize & 0xff;
        assert_eq!(c.dword(next) & 0xffff, 0x0001);
        assert_eq!(c.dword(0x3c) >> 8 & 0xff, 1, "INTA");
        // 4 GiB of GGTT: 8 MiB of entries (GGMS 3), no stolen memory, locked.
        assert_eq!(c.dword(off::GGC) & 0xffff, 3 << 6 | 1);
        assert_eq!(ggms(2 << 30), 2);
        assert_eq!(ggms(1 << 30), 1);
    }

    #[test]
    fn bar_sizing_like_hardware() {
        let mut c = space();
        w32(&mut c, off::BAR0, u32::MAX);
        w32(&mut c, off::BAR0 + 4, u32::MAX);
        assert_eq!(c.dword(off::BAR0), 0xff00_0004, "16 MiB, 64-bit");
        assert_eq!(c.dword(off::BAR0 + 4), u32::MAX);
        w32(&mut c, off::BAR2, u32::MAX);
        assert_eq!(c.dword(off::BAR2), 0xf000_000c, "256 MiB, 64-bit prefetchable");
        w32(&mut c, off::BAR4, u32::MAX);
        assert_eq!(c.dword(off::BAR4), 0xffff_ffc1, "64 bytes of I/O");
        w32(&mut c, off::ROM, u32::MAX);
        assert_eq!(c.dword(off::ROM), 0, "no ROM");
        w32(&mut c, off::BAR0, 0xd000_0000);
        w32(&mut c, off::BAR0 + 4, 0x1);
        assert_eq!(c.bar_base(0), 0x1_d000_0000);
        w32(&mut c, off::BAR2, 0xc123_4567);
        assert_eq!(c.bar_base(2), 0xc000_0000, "aligned to the size");
    }

    #[test]
    fn read_only_and_rw1c() {
        let mut c = space();
        w32(&mut c, 0, 0);
        assert_eq!(c.dword(0), 0x1912_8086, "ids are read only");
        w32(&mut c, off::GGC, 0xffff_ffff);
        assert_eq!(c.dword(off::GGC) & 0xffff, 3 << 6 | 1, "GGC is locked");
        w32(&mut c, off::BDSM, 0x8000_0000);
        assert_eq!(c.dword(off::BDSM), 0, "no stolen memory");
        w32(&mut c, off::COMMAND, 0xffff_ffff);
        assert_eq!(c.dword(off::COMMAND) & 0xffff, 0x0407);
        assert_eq!(c.dword(off::STATUS - 2) >> 16, 0x0010, "status: capability bit kept, RW1C bits were 0");
        assert!(c.memory_enabled());
        w32(&mut c, off::ASLS, 0x7ffe_0000);
        assert_eq!(c.asls(), 0x7ffe_0000);
        c.reset();
        assert_eq!(c.asls(), 0);
        assert!(!c.memory_enabled());
    }

    #[test]
    fn msi_pm_and_swsci() {
        let mut c = space();
        c.write(off::MSI_CAP + 2, &[0x71, 0x00]);
        assert!(c.msi_enabled());
        assert_eq!(c.dword(off::MSI_CAP) >> 16, 0x1, "single message only");
        w32(&mut c, off::MSI_CAP + 4, 0xfee0_0003);
        assert_eq!(c.dword(off::MSI_CAP + 4), 0xfee0_0000);
        assert!(c.write(off::PMCSR, &[3]).entered_d3);
        assert!(!c.write(off::PMCSR, &[3]).entered_d3, "already there");
        c.write(off::PMCSR, &[1]);
        assert_eq!(c.dword(off::PMCSR) & 3, 3, "D1 unsupported");
        assert!(!c.write(off::SWSCI, &[0x01, 0x00]).swsci, "SCI not selected");
        c.write(off::SWSCI, &[0x00, 0x00]);
        assert!(c.write(off::SWSCI, &[0x01, 0x80]).swsci);
        c.swsci_done();
        assert_eq!(c.dword(off::SWSCI) & 0xffff, 0x8000);
    }
}
