//! BAR0 of a vGPU: the register file with its handlers, the interrupt tree, PVINFO, fences and
//! the GTT.
//!
//! | BAR0 range | what |
//! |---|---|
//! | 0 .. 2 MiB | registers: the [`RegTable`](super::regs::RegTable), the interrupt tree, PVINFO at 0x78000, fences at 0x100000 |
//! | 2 MiB .. 8 MiB | nothing (reads zero, writes dropped) |
//! | 8 MiB .. 16 MiB | the GTT: 8-byte entries, 4- and 8-byte accesses, into `mm` |
//!
//! Register accesses are 1, 2, 4 or 8 bytes and naturally aligned; 8-byte accesses are two
//! dword accesses, low first; narrower writes merge into the current value.

use vm_memory::GuestAddressSpace;

use super::device::{DeviceError, Vgpu, BAR0_SIZE};
use super::irq::IrqTree;
use super::regs::{merge, Failsafe, Kind, RingReg};
use crate::hw::bar0::GTT_OFFSET;
use crate::hw::pvinfo::{off as pv, G2vNotify, PVINFO_BASE, PVINFO_SIZE};
use crate::hw::reg::{self, ring};
use crate::hw::{Engine, EngineMask};
use crate::mm::PpgttRoot;

/// PCODE memory latencies for Gen9 (two reads of four levels each), as GVT-g reports them.
const MEM_LATENCY: [u32; 2] = [0x1e1a_1100, 0x6151_4b3d];

fn bad(offset: u64, size: usize, why: &'static str) -> DeviceError {
    DeviceError::BadAccess { region: "BAR0", offset, size, why }
}

impl<A> Vgpu<A>
where
    A: GuestAddressSpace + Send + Sync + 'static,
    A::M: Send + Sync,
{
    /// A guest read of BAR0 at `offset` into `data` (1, 2, 4 or 8 bytes). On error `data` holds
    /// zeros.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        data.fill(0);
        let size = data.len();
        if let Some(rel) = gtt_offset(offset, size)? {
            let v = self.engines.read_gtt(rel, size)?;
            let b = v.to_le_bytes();
            data.copy_from_slice(b.get(..size).ok_or_else(|| bad(offset, size, "size"))?);
            return Ok(());
        }
        check_reg_access(offset, size)?;
        if offset >= u64::from(reg::MMIO_SIZE) {
            return Ok(());
        }
        let off = offset as u32;
        let dw = off & !3;
        let v = match size {
            8 => u64::from(self.read_dword(dw)) | u64::from(self.read_dword(dw + 4)) << 32,
            _ => u64::from(self.read_dword(dw) >> ((off & 3) * 8)),
        };
        if let Some(b) = v.to_le_bytes().get(..size) {
            data.copy_from_slice(b);
        }
        Ok(())
    }

    /// A guest write of `data` (1, 2, 4 or 8 bytes) to BAR0 at `offset`.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let size = data.len();
        let mut b = [0u8; 8];
        b.get_mut(..size).ok_or_else(|| bad(offset, size, "size"))?.copy_from_slice(data);
        let value = u64::from_le_bytes(b);
        if let Some(rel) = gtt_offset(offset, size)? {
            return Ok(self.engines.write_gtt(rel, size, value)?);
        }
        check_reg_access(offset, size)?;
        if offset >= u64::from(reg::MMIO_SIZE) {
            return Ok(());
        }
        let off = offset as u32;
        let dw = off & !3;
        match size {
            8 => {
                self.write_dword(dw, value as u32)?;
                self.write_dword(dw + 4, (value >> 32) as u32)
            }
            4 => self.write_dword(dw, value as u32),
            _ => {
                // Narrow write: merge into the current stored value.
                let shift = (off & 3) * 8;
                let mask = if size == 1 { 0xffu32 } else { 0xffff } << shift;
                let cur = self.bar0.lock().regs.get(dw);
                self.write_dword(dw, (cur & !mask) | ((value as u32) << shift & mask))
            }
        }
    }

    fn read_dword(&self, off: u32) -> u32 {
        if IrqTree::owns(off) {
            return self.irq.tree.lock().read(off).unwrap_or(0);
        }
        let mut b = self.bar0.lock();
        if (PVINFO_BASE..PVINFO_BASE + PVINFO_SIZE).contains(&off) {
            b.pv_notified = true;
            return b.pv.dword(off - PVINFO_BASE).unwrap_or(0);
        }
        let Some(info) = b.regs.table().lookup(off) else {
            if !is_fence(off) {
                b.regs.note_unknown(off, false);
            }
            return b.regs.get(off);
        };
        let kind = info.kind;
        let stored = b.regs.get(off);
        match kind {
            Kind::Ring(e, RingReg::Execlist | RingReg::CsbPtr) => {
                drop(b);
                self.engines.read_execlist(e, off - e.mmio_base()).unwrap_or(0)
            }
            Kind::Ring(_, t @ (RingReg::Timestamp | RingReg::TimestampUdw)) => {
                let ns = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let ticks = self.params.device.platform.gen().timestamp_ticks(ns);
                if t == RingReg::Timestamp {
                    ticks as u32
                } else {
                    (ticks >> 32) as u32
                }
            }
            Kind::GucStatus => {
                // The microcontroller shows as in reset once, then as out of it.
                b.regs.set(off, stored & !reg::GUC_MIA_IN_RESET);
                stored
            }
            _ => stored,
        }
    }

    fn write_dword(&self, off: u32, value: u32) -> Result<(), DeviceError> {
        if IrqTree::owns(off) {
            let asserted = self.irq.tree.lock().write(off, value).unwrap_or(false);
            if asserted {
                self.irq.deliver();
            }
            return Ok(());
        }
        if (PVINFO_BASE..PVINFO_BASE + PVINFO_SIZE).contains(&off) {
            return self.pvinfo_write(off - PVINFO_BASE, value);
        }
        let mut b = self.bar0.lock();
        if is_fence(off) {
            let index = (off - reg::FENCE0) / 8;
            let owned = self.params.gm.fences.len();
            if index as usize >= owned {
                return Err(DeviceError::Fence { index, owned });
            }
            b.regs.set(off, value);
            return Ok(());
        }
        let Some(info) = b.regs.table().lookup(off).copied() else {
            b.regs.note_unknown(off, true);
            b.regs.set(off, value);
            return Ok(());
        };
        let old = b.regs.get(off);
        let new = merge(&info, old, value);
        if b.failsafe.is_some() {
            // Failsafe: registers are storage, nothing reaches the engines.
            b.regs.set(off, new);
            return Ok(());
        }
        match info.kind {
            Kind::Plain => b.regs.set(off, new),
            Kind::Forcewake { ack } => {
                b.regs.set(off, new);
                b.regs.set(ack, new & 0xffff);
            }
            Kind::Ring(e, RingReg::Elsp) => {
                drop(b);
                self.engines.write_elsp(e, value)?;
            }
            Kind::Ring(e, RingReg::CsbPtr) => {
                drop(b);
                self.engines.write_csb_ptr(e, value)?;
            }
            Kind::Ring(_, RingReg::Execlist | RingReg::Timestamp | RingReg::TimestampUdw) => {}
            Kind::Ring(e, RingReg::HwsPga) => {
                b.regs.set(off, new);
                drop(b);
                self.engines.set_hws_pga(e, u64::from(new & !0xfff))?;
            }
            Kind::Ring(_, RingReg::MiMode) => {
                let idle = if new & ring::STOP_RING != 0 { ring::MODE_IDLE } else { 0 };
                b.regs.set(off, (new & !ring::MODE_IDLE) | idle);
            }
            Kind::Ring(_, RingReg::ResetCtl) => {
                let ready = if new & ring::REQUEST_RESET != 0 { ring::READY_TO_RESET } else { 0 };
                b.regs.set(off, (new & !ring::READY_TO_RESET) | ready);
            }
            Kind::Ring(_, RingReg::RingMode) => {
                let enabling = value & (value >> 16) & (ring::GFX_PPGTT_ENABLE | ring::GFX_RUN_LIST_ENABLE);
                if enabling != 0 && !b.pv_notified {
                    let why = Failsafe::UnsupportedGuest("PPGTT or execlists enabled before reading PVINFO");
                    b.failsafe = Some(why);
                    return Err(DeviceError::Failsafe(why));
                }
                b.regs.set(off, new);
            }
            Kind::Gdrst => {
                drop(b);
                return self.gdrst(value);
            }
            Kind::TlbInvalidate | Kind::Discard => b.regs.set(off, 0),
            Kind::PcodeMailbox => {
                if new & reg::PCODE_READY != 0 {
                    let data = b.regs.get(reg::PCODE_DATA);
                    let reply = match new & 0xff {
                        reg::PCODE_READ_MEM_LATENCY => Some(MEM_LATENCY.get(data as usize & 1).copied().unwrap_or(0)),
                        reg::PCODE_CDCLK_CONTROL => Some(1), // ready for change
                        reg::PCODE_READ_RC6VIDS => Some(data | 1),
                        // SAGV requests: reported done (disabled); there is no SAGV to switch.
                        reg::PCODE_SAGV_CONTROL => Some(1),
                        _ => None,
                    };
                    if let Some(r) = reply {
                        b.regs.set(reg::PCODE_DATA, r);
                    }
                }
                b.regs.set(off, new & !(reg::PCODE_READY | reg::PCODE_ERROR_MASK));
            }
            Kind::GucStatus => b.regs.set(off, new),
            Kind::PowerWell => {
                let requests = new & 0xaaaa_aaaa;
                b.regs.set(off, requests | requests >> 1);
            }
            Kind::AuxChannel => {
                let status = reg::AUX_DONE | reg::AUX_TIME_OUT_ERROR | reg::AUX_RECEIVE_ERROR;
                let old = b.regs.get(off);
                let kept = old & status & !value;
                let v = if value & reg::AUX_SEND_BUSY != 0 {
                    (value & !(reg::AUX_SEND_BUSY | status)) | reg::AUX_DONE | reg::AUX_TIME_OUT_ERROR
                } else {
                    (value & !status) | kept
                };
                b.regs.set(off, v);
            }
            Kind::CompletesAtOnce { bits } => b.regs.set(off, new & !bits),
            Kind::WriteOneToClear => {
                let old = b.regs.get(off);
                b.regs.set(off, old & !value);
            }
            Kind::RequestAck { request, ack } => {
                // The state follows the request (a PLL locks when enabled and unlocks when
                // disabled); without a request bit it keeps its value.
                let state = match request {
                    0 => new & ack,
                    r if new & r != 0 => ack,
                    _ => 0,
                };
                b.regs.set(off, (new & !ack) | state);
            }
        }
        Ok(())
    }

    /// GDRST: bit 0 resets every engine (and restores the GT registers below the interrupt
    /// block), the engine bits reset those engines, the GuC bit puts GUC_STATUS back in reset.
    /// The register reads zero afterwards: every reset completes at once.
    fn gdrst(&self, value: u32) -> Result<(), DeviceError> {
        let present = self.params.device.engines();
        let full = value & reg::GRDOM_FULL != 0;
        let mask = Engine::ALL
            .into_iter()
            .filter(|e| full || value & e.gdrst_bit() != 0)
            .fold(EngineMask::empty(), |m, e| m | e.mask())
            & present;
        {
            let mut b = self.bar0.lock();
            if full {
                b.regs.reset(0, reg::MASTER_IRQ);
            }
            if value & reg::GRDOM_GUC != 0 {
                let g = b.regs.get(reg::GUC_STATUS);
                b.regs.set(reg::GUC_STATUS, g | reg::GUC_MIA_IN_RESET);
            }
            b.regs.set(reg::GDRST, 0);
        }
        if !mask.is_empty() {
            self.engines.reset_engines(mask)?;
        }
        Ok(())
    }

    fn pvinfo_write(&self, rel: u32, value: u32) -> Result<(), DeviceError> {
        let mut b = self.bar0.lock();
        match rel {
            pv::DISPLAY_READY | pv::CURSOR_X_HOT | 0x834 => {
                b.pv.set_dword(rel, value);
            }
            r if (pv::PDP..pv::END_OF_FIELDS).contains(&r) => {
                b.pv.set_dword(rel, value);
            }
            r if (pv::RSV5..pv::RSV5 + 16).contains(&r) => {
                let why = Failsafe::InsufficientResource;
                b.failsafe = Some(why);
                return Err(DeviceError::Failsafe(why));
            }
            pv::G2V_NOTIFY => {
                b.pv.set_dword(rel, value);
                let roots: Vec<u64> = (0..4).filter_map(|i| b.pv.root(i)).collect();
                let failsafe = b.failsafe.is_some();
                drop(b);
                if failsafe {
                    return Ok(());
                }
                let l3 = || {
                    let mut r = [0u64; 4];
                    for (d, s) in r.iter_mut().zip(&roots) {
                        *d = *s;
                    }
                    PpgttRoot::L3(r)
                };
                let l4 = || PpgttRoot::L4(roots.first().copied().unwrap_or(0));
                match G2vNotify::from_raw(value) {
                    Some(G2vNotify::Ppgtt4Create) => self.engines.ppgtt_created(l4())?,
                    Some(G2vNotify::Ppgtt3Create) => self.engines.ppgtt_created(l3())?,
                    Some(G2vNotify::Ppgtt4Destroy) => self.engines.ppgtt_destroyed(l4()),
                    Some(G2vNotify::Ppgtt3Destroy) => self.engines.ppgtt_destroyed(l3()),
                    _ => {}
                }
            }
            // Everything else in the page is the device's: writes are dropped.
            _ => {}
        }
        Ok(())
    }
}

/// The offset in the GTT region of an access at BAR0 `offset`, `None` below it; an access
/// running past the end of BAR0 is an error.
fn gtt_offset(offset: u64, size: usize) -> Result<Option<u64>, DeviceError> {
    if offset < GTT_OFFSET {
        return Ok(None);
    }
    if offset.checked_add(size as u64).is_none_or(|end| end > BAR0_SIZE) {
        return Err(bad(offset, size, "beyond BAR0"));
    }
    Ok(Some(offset - GTT_OFFSET))
}

fn is_fence(off: u32) -> bool {
    (reg::FENCE0..reg::FENCE0 + 8 * reg::FENCE_SLOTS).contains(&off)
}

/// Register accesses: 1, 2, 4 or 8 bytes, naturally aligned.
fn check_reg_access(offset: u64, size: usize) -> Result<(), DeviceError> {
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(bad(offset, size, "registers take 1, 2, 4 or 8 bytes"));
    }
    if offset % size as u64 != 0 {
        return Err(bad(offset, size, "unaligned register access"));
    }
    Ok(())
}
