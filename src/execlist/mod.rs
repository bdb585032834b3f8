//! The virtual execlist of one (vGPU, engine): the ELSP latch, descriptor validation, the two
//! virtual slots with lite restore, EXECLIST_STATUS, and the context status buffer (CSB) in
//! registers and in the guest's status page, with the context-switch interrupt it raises.
//!
//! The model follows the hardware as i915 drives it (and as GVT-g emulates it): the guest writes
//! four dwords to ELSP (element 1 high, element 1 low, element 0 high, element 0 low); the fourth
//! write submits. [`VirtualExeclist::submit`] validates the elements; the device model turns each
//! into a workload and calls [`VirtualExeclist::schedule_in`] when element 0 is dispatched and
//! [`VirtualExeclist::schedule_out`] when an element completes. Each returns the CSB events it
//! wrote and whether to raise the engine's context-switch interrupt. [`create_workload`] turns a
//! submitted descriptor into a scanned workload with its page tables shadowed.

mod descriptor;
pub mod fuzzing;
pub mod workload;

pub use descriptor::{AddressingMode, ContextDescriptor, DescriptorError};
pub use workload::{create_workload, fetch_batch, Workload, WorkloadError, WorkloadParams};

use vm_memory::{Bytes, GuestMemory};

use crate::cmd::{AddrSpace, GmTranslate, GmWindows};

/// CSB entries on Gen8/Gen9.
pub const CSB_ENTRIES: usize = 6;
/// Write-pointer value after reset: nothing written yet.
pub const CSB_WP_RESET: u8 = 7;
/// Dword of the guest status page holding CSB entry 0 (entries are 2 dwords each).
pub const HWSP_CSB_DWORD: u64 = 0x10;
/// Dword of the guest status page holding the CSB write pointer.
pub const HWSP_CSB_WP_DWORD: u64 = 0x1f;

/// Register offsets relative to the engine's MMIO base.
pub mod reg {
    /// ExecList Submit Port.
    pub const ELSP: u32 = 0x230;
    /// EXECLIST_STATUS, low dword.
    pub const STATUS_LO: u32 = 0x234;
    /// EXECLIST_STATUS, high dword (running context ID).
    pub const STATUS_HI: u32 = 0x238;
    /// First CSB entry (6 × 8 bytes).
    pub const CSB: u32 = 0x370;
    /// CSB read/write pointers (masked).
    pub const CSB_PTR: u32 = 0x3a0;
}

bitflags::bitflags! {
    /// CSB status bits (low dword of an entry).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CsbStatus: u32 {
        /// Idle to active.
        const IDLE_TO_ACTIVE = 1 << 0;
        /// Preempted.
        const PREEMPTED = 1 << 1;
        /// Element switch.
        const ELEMENT_SWITCH = 1 << 2;
        /// Active to idle.
        const ACTIVE_TO_IDLE = 1 << 3;
        /// Context complete.
        const CONTEXT_COMPLETE = 1 << 4;
        /// Lite restore.
        const LITE_RESTORE = 1 << 15;
    }
}

/// One CSB entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsbEvent {
    /// Status bits.
    pub status: CsbStatus,
    /// Context ID (upper descriptor dword) the event is about.
    pub context_id: u32,
}

impl CsbEvent {
    /// The 64-bit entry as the hardware stores it.
    pub fn raw(&self) -> u64 {
        u64::from(self.status.bits()) | u64::from(self.context_id) << 32
    }
}

/// What a scheduling step did: the CSB entries written, and whether the context-switch interrupt
/// is due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Switch {
    /// Entries written, in order.
    pub events: Vec<CsbEvent>,
    /// Raise the engine's context-switch interrupt.
    pub interrupt: bool,
}

/// Errors of the virtual execlist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExeclistError {
    /// An element failed validation.
    #[error("ELSP element {element}: {why}")]
    Descriptor {
        /// 0 or 1.
        element: u8,
        /// Why.
        why: DescriptorError,
    },
    /// Element 0 is not valid.
    #[error("ELSP element 0 is not valid")]
    NoElement0,
    /// A submission while both slots are occupied.
    #[error("execlist queue full: submission while two are pending")]
    QueueFull,
    /// Schedule-out with nothing running.
    #[error("completion with no running context")]
    NothingRunning,
}

/// A validated ELSP submission: element 0 and an optional element 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submission {
    /// The elements; element 1 is `None` when its descriptor was 0 (not valid).
    pub elements: [Option<ContextDescriptor>; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    ctx: [Option<ContextDescriptor>; 2],
    /// Element of `ctx` running (0 or 1).
    running: usize,
}

/// The virtual execlist of one engine of one vGPU.
#[derive(Clone, Debug)]
pub struct VirtualExeclist {
    latch: [u32; 4],
    latched: u8,
    running: Option<Slot>,
    pending: Option<Slot>,
    /// Slot index the running slot occupies (EXECLIST_STATUS current pointer).
    current: u8,
    csb: [u64; CSB_ENTRIES],
    csb_wp: u8,
    csb_rp: u8,
    context_size: u64,
}

impl VirtualExeclist {
    /// A reset execlist for an engine whose context images are `context_size` bytes (22 pages on
    /// Gen9 RCS, 20 on Gen8 RCS, 2 elsewhere).
    pub fn new(context_size: u64) -> Self {
        VirtualExeclist {
            latch: [0; 4],
            latched: 0,
            running: None,
            pending: None,
            current: 0,
            csb: [0; CSB_ENTRIES],
            csb_wp: CSB_WP_RESET,
            csb_rp: CSB_WP_RESET,
            context_size,
        }
    }

    /// Engine reset: everything back to the power-on state.
    pub fn reset(&mut self) {
        *self = VirtualExeclist::new(self.context_size);
    }

    /// A guest write to ELSP. Returns the submission when this was the fourth dword.
    pub fn write_elsp(&mut self, value: u32, windows: &GmWindows) -> Result<Option<Submission>, ExeclistError> {
        if let Some(d) = self.latch.get_mut(usize::from(3 - self.latched.min(3))) {
            *d = value;
        }
        self.latched += 1;
        if self.latched < 4 {
            return Ok(None);
        }
        self.latched = 0;
        let [lo0, hi0, lo1, hi1] = self.latch;
        self.submit(
            ContextDescriptor(u64::from(lo0) | u64::from(hi0) << 32),
            ContextDescriptor(u64::from(lo1) | u64::from(hi1) << 32),
            windows,
        )
        .map(Some)
    }

    /// Validates a submission of two elements (element 1 may be 0).
    pub fn submit(
        &self,
        e0: ContextDescriptor,
        e1: ContextDescriptor,
        windows: &GmWindows,
    ) -> Result<Submission, ExeclistError> {
        if !e0.valid() {
            return Err(ExeclistError::NoElement0);
        }
        e0.validate(windows, self.context_size).map_err(|why| ExeclistError::Descriptor { element: 0, why })?;
        let e1 = if e1.valid() {
            e1.validate(windows, self.context_size).map_err(|why| ExeclistError::Descriptor { element: 1, why })?;
            Some(e1)
        } else {
            None
        };
        Ok(Submission { elements: [Some(e0), e1] })
    }

    fn push(&mut self, out: &mut Switch, status: CsbStatus, context_id: u32) {
        let wp = if usize::from(self.csb_wp) >= CSB_ENTRIES { 0 } else { (self.csb_wp + 1) % CSB_ENTRIES as u8 };
        let ev = CsbEvent { status, context_id };
        if let Some(e) = self.csb.get_mut(usize::from(wp)) {
            *e = ev.raw();
        }
        self.csb_wp = wp;
        out.events.push(ev);
    }

    /// Element 0 of `sub` starts on the engine.
    pub fn schedule_in(&mut self, sub: &Submission) -> Result<Switch, ExeclistError> {
        let mut out = Switch::default();
        let new = Slot { ctx: sub.elements, running: 0 };
        let id0 = sub.elements[0].map_or(0, |d| d.context_id());
        let Some(run) = self.running else {
            self.running = Some(new);
            self.push(&mut out, CsbStatus::IDLE_TO_ACTIVE, 0);
            out.interrupt = true;
            return Ok(out);
        };
        if self.pending.is_some() {
            return Err(ExeclistError::QueueFull);
        }
        let same = |a: Option<ContextDescriptor>, b: Option<ContextDescriptor>| match (a, b) {
            (Some(a), Some(b)) => a.same_context(&b),
            _ => false,
        };
        let lite = match run.ctx[1] {
            Some(_) => run.running == 1 && same(run.ctx[1], sub.elements[0]),
            None => same(run.ctx[0], sub.elements[0]),
        };
        if lite {
            // The running context is resubmitted with a new tail: it keeps running.
            self.running = Some(new);
            self.current ^= 1;
            self.push(&mut out, CsbStatus::LITE_RESTORE | CsbStatus::PREEMPTED, id0);
            out.interrupt = true;
        } else {
            self.pending = Some(new);
        }
        Ok(out)
    }

    /// The running element completed.
    pub fn schedule_out(&mut self) -> Result<Switch, ExeclistError> {
        let mut out = Switch::default();
        let Some(mut run) = self.running else { return Err(ExeclistError::NothingRunning) };
        let done = run.ctx.get(run.running).copied().flatten().map_or(0, |d| d.context_id());
        if run.running == 0 && run.ctx[1].is_some() {
            run.running = 1;
            self.running = Some(run);
            self.push(&mut out, CsbStatus::ELEMENT_SWITCH | CsbStatus::CONTEXT_COMPLETE, done);
            out.interrupt = true;
            return Ok(out);
        }
        self.push(&mut out, CsbStatus::ACTIVE_TO_IDLE | CsbStatus::CONTEXT_COMPLETE, done);
        self.running = self.pending.take();
        self.current ^= 1;
        if self.running.is_some() {
            self.push(&mut out, CsbStatus::IDLE_TO_ACTIVE, 0);
        }
        out.interrupt = true;
        Ok(out)
    }

    /// The context ID running now.
    fn running_id(&self) -> u32 {
        self.running.and_then(|s| s.ctx.get(s.running).copied().flatten()).map_or(0, |d| d.context_id())
    }

    /// Reads an execlist register at `off` (relative to the engine base), if it is one.
    pub fn read(&self, off: u32) -> Option<u32> {
        match off {
            reg::STATUS_LO => {
                let r = u32::from(self.current & 1);
                let mut v = r | (r ^ 1) << 1;
                if self.pending.is_some() {
                    v |= 1 << 2;
                }
                if self.running.is_some() {
                    v |= if r == 0 { 1 << 4 | 1 << 18 } else { 1 << 3 | 1 << 17 };
                }
                Some(v)
            }
            reg::STATUS_HI => Some(self.running_id()),
            reg::CSB_PTR => Some(u32::from(self.csb_rp) << 8 | u32::from(self.csb_wp)),
            o if (reg::CSB..reg::CSB + 8 * CSB_ENTRIES as u32).contains(&o) && o % 4 == 0 => {
                let i = ((o - reg::CSB) / 8) as usize;
                let e = self.csb.get(i).copied().unwrap_or(0);
                Some(if (o - reg::CSB) % 8 == 0 { e as u32 } else { (e >> 32) as u32 })
            }
            _ => None,
        }
    }

    /// A guest write to the CSB pointer register (masked: bits 31:16 enable bits 15:0). Only the
    /// read pointer is the guest's; a write pointer of 7 (as i915 writes after reset) restarts it.
    pub fn write_csb_ptr(&mut self, value: u32) {
        let mask = value >> 16;
        if mask & 0x700 != 0 {
            let rp = ((value >> 8) & 7) as u8;
            self.csb_rp = rp;
        }
        if mask & 0x7 != 0 && value & 7 == u32::from(CSB_WP_RESET) {
            self.csb_wp = CSB_WP_RESET;
        }
    }

    /// Mirrors the CSB and its write pointer into the guest's status page at GGTT `hws_pga`, as
    /// the hardware does (i915 reads them there). Pages the guest has not mapped are skipped.
    pub fn mirror_to_hwsp<M, T>(&self, mem: &M, xlate: &T, hws_pga: u64, windows: &GmWindows)
    where
        M: GuestMemory + ?Sized,
        T: GmTranslate + ?Sized,
    {
        if !windows.contains(hws_pga, 4096) {
            return;
        }
        let Some(page) = xlate.translate(AddrSpace::Ggtt, hws_pga & !0xfff) else { return };
        for (i, e) in self.csb.iter().enumerate() {
            let at = page.0 + (HWSP_CSB_DWORD + 2 * i as u64) * 4;
            let _ = mem.write_obj(*e, vm_memory::GuestAddress(at));
        }
        let _ = mem.write_obj(u32::from(self.csb_wp), vm_memory::GuestAddress(page.0 + HWSP_CSB_WP_DWORD * 4));
    }
}

#[cfg(test)]
mod tests;
