//! The Gen8 interrupt tree of one vGPU: groups of ISR/IMR/IIR/IER registers (GT banks, display
//! pipes and ports, PCU, PCH) below the master interrupt control register.
//!
//! An event sets its bit in the group's IIR unless IMR masks it. A group whose `IIR & IER` is not
//! zero shows up as its bit in the master register; when the master enable (bit 31) is set and any
//! group is pending, the vGPU asserts its interrupt (an MSI through the VMM). IIR bits are
//! write-one-to-clear; the master bits follow the groups.

use crate::cmd::Events;
use crate::hw::reg::{DE_MISC_ISR, DE_PIPE_ISR_A, DE_PORT_ISR, GT_ISR0, MASTER_IRQ, PCU_ISR, SDE_ISR};
use crate::hw::Engine;

/// The master register's enable bit.
pub const MASTER_IRQ_CONTROL: u32 = 1 << 31;

/// One group of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqGroup {
    /// GT bank 0: render (low half), blitter (high half).
    Gt0,
    /// GT bank 1: video (low), second video (high).
    Gt1,
    /// GT bank 2: power management.
    Gt2,
    /// GT bank 3: video enhancement (low).
    Gt3,
    /// Display pipe A.
    PipeA,
    /// Display pipe B.
    PipeB,
    /// Display pipe C.
    PipeC,
    /// Display ports (AUX, hot plug).
    DePort,
    /// Display miscellaneous.
    DeMisc,
    /// Power control unit.
    Pcu,
    /// South display engine (PCH).
    Pch,
}

const GROUPS: [IrqGroup; 11] = [
    IrqGroup::Gt0,
    IrqGroup::Gt1,
    IrqGroup::Gt2,
    IrqGroup::Gt3,
    IrqGroup::PipeA,
    IrqGroup::PipeB,
    IrqGroup::PipeC,
    IrqGroup::DePort,
    IrqGroup::DeMisc,
    IrqGroup::Pcu,
    IrqGroup::Pch,
];

impl IrqGroup {
    /// BAR0 offset of the group's ISR (IMR, IIR, IER follow at +4, +8, +0xc).
    pub const fn isr(self) -> u32 {
        match self {
            IrqGroup::Gt0 => GT_ISR0,
            IrqGroup::Gt1 => GT_ISR0 + 0x10,
            IrqGroup::Gt2 => GT_ISR0 + 0x20,
            IrqGroup::Gt3 => GT_ISR0 + 0x30,
            IrqGroup::PipeA => DE_PIPE_ISR_A,
            IrqGroup::PipeB => DE_PIPE_ISR_A + 0x10,
            IrqGroup::PipeC => DE_PIPE_ISR_A + 0x20,
            IrqGroup::DePort => DE_PORT_ISR,
            IrqGroup::DeMisc => DE_MISC_ISR,
            IrqGroup::Pcu => PCU_ISR,
            IrqGroup::Pch => SDE_ISR,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// The master-register bits this group's pending bits propagate to: `(mask of the group's
    /// bits, master bit)` pairs (the GT banks split into halves).
    fn upstream(self) -> &'static [(u32, u32)] {
        match self {
            IrqGroup::Gt0 => &[(0xffff, 1 << 0), (0xffff_0000, 1 << 1)],
            IrqGroup::Gt1 => &[(0xffff, 1 << 2), (0xffff_0000, 1 << 3)],
            IrqGroup::Gt2 => &[(u32::MAX, 1 << 4)],
            IrqGroup::Gt3 => &[(u32::MAX, 1 << 6)],
            IrqGroup::PipeA => &[(u32::MAX, 1 << 16)],
            IrqGroup::PipeB => &[(u32::MAX, 1 << 17)],
            IrqGroup::PipeC => &[(u32::MAX, 1 << 18)],
            IrqGroup::DePort => &[(u32::MAX, 1 << 20)],
            IrqGroup::DeMisc => &[(u32::MAX, 1 << 22)],
            IrqGroup::Pch => &[(u32::MAX, 1 << 23)],
            IrqGroup::Pcu => &[(u32::MAX, 1 << 30)],
        }
    }
}

/// An engine's interrupt sources: its group and the shift of its bits in that group.
pub fn engine_bits(engine: Engine) -> (IrqGroup, u32) {
    match engine {
        Engine::Rcs => (IrqGroup::Gt0, 0),
        Engine::Bcs => (IrqGroup::Gt0, 16),
        Engine::Vcs => (IrqGroup::Gt1, 0),
        Engine::Vcs2 => (IrqGroup::Gt1, 16),
        Engine::Vecs => (IrqGroup::Gt3, 0),
    }
}

/// GT interrupt bits (before the engine's shift).
pub mod gt {
    /// MI_USER_INTERRUPT.
    pub const USER: u32 = 1 << 0;
    /// PIPE_CONTROL / MI_FLUSH_DW notify.
    pub const NOTIFY: u32 = 1 << 4;
    /// Context switch (new CSB events).
    pub const CONTEXT_SWITCH: u32 = 1 << 8;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Regs {
    isr: u32,
    imr: u32,
    iir: u32,
    ier: u32,
}

/// The registers of the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IrqTree {
    groups: [Regs; GROUPS.len()],
    master_enable: bool,
}

impl IrqTree {
    /// Everything masked and disabled (the reset state).
    pub fn new() -> Self {
        let mut t = IrqTree::default();
        t.reset();
        t
    }

    /// Back to the reset state: IMR all ones, the rest zero.
    pub fn reset(&mut self) {
        for g in &mut self.groups {
            *g = Regs { imr: u32::MAX, ..Regs::default() };
        }
        self.master_enable = false;
    }

    /// Whether `off` is one of the tree's registers.
    pub fn owns(off: u32) -> bool {
        off == MASTER_IRQ || Self::locate(off).is_some()
    }

    fn locate(off: u32) -> Option<(usize, u32)> {
        GROUPS.iter().find_map(|g| {
            let rel = off.checked_sub(g.isr())?;
            (rel < 0x10 && rel % 4 == 0).then_some((g.index(), rel))
        })
    }

    /// The master register as the guest reads it: the enable bit and one bit per pending source.
    pub fn master(&self) -> u32 {
        let mut v = if self.master_enable { MASTER_IRQ_CONTROL } else { 0 };
        for (g, r) in GROUPS.iter().zip(&self.groups) {
            let pending = r.iir & r.ier;
            for &(mask, bit) in g.upstream() {
                if pending & mask != 0 {
                    v |= bit;
                }
            }
        }
        v
    }

    /// Whether the vGPU's interrupt is asserted: enabled, and something pending.
    pub fn asserted(&self) -> bool {
        self.master() & !MASTER_IRQ_CONTROL != 0 && self.master_enable
    }

    /// Reads a register of the tree.
    pub fn read(&self, off: u32) -> Option<u32> {
        if off == MASTER_IRQ {
            return Some(self.master());
        }
        let (i, rel) = Self::locate(off)?;
        let r = self.groups.get(i)?;
        Some(match rel {
            0 => r.isr,
            4 => r.imr,
            8 => r.iir,
            _ => r.ier,
        })
    }

    /// Writes a register of the tree; returns whether the interrupt is now asserted (the caller
    /// delivers it), `None` if `off` is not the tree's.
    pub fn write(&mut self, off: u32, value: u32) -> Option<bool> {
        if off == MASTER_IRQ {
            self.master_enable = value & MASTER_IRQ_CONTROL != 0;
            return Some(self.asserted());
        }
        let (i, rel) = Self::locate(off)?;
        let r = self.groups.get_mut(i)?;
        match rel {
            // ISR reflects live status; the guest cannot change it.
            0 => {}
            4 => r.imr = value,
            8 => r.iir &= !value,
            _ => r.ier = value,
        }
        Some(self.asserted())
    }

    /// Raises `bits` of `group`: unmasked ones latch in IIR. Returns whether the interrupt is
    /// asserted afterwards.
    pub fn raise(&mut self, group: IrqGroup, bits: u32) -> bool {
        if let Some(r) = self.groups.get_mut(group.index()) {
            r.iir |= bits & !r.imr;
        }
        self.asserted()
    }

    /// Raises what an engine reported: a context switch and the interrupts its commands asked for.
    pub fn raise_engine(&mut self, engine: Engine, context_switch: bool, events: Events) -> bool {
        let (group, shift) = engine_bits(engine);
        let mut bits = 0;
        if context_switch {
            bits |= gt::CONTEXT_SWITCH;
        }
        if events.contains(Events::USER_INTERRUPT) {
            bits |= gt::USER;
        }
        if events.intersects(Events::PIPE_CONTROL_NOTIFY | Events::FLUSH_DW_NOTIFY) {
            bits |= gt::NOTIFY;
        }
        self.raise(group, bits << shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GT0_IMR: u32 = GT_ISR0 + 4;
    const GT0_IIR: u32 = GT_ISR0 + 8;
    const GT0_IER: u32 = GT_ISR0 + 0xc;

    #[test]
    fn masked_events_do_not_latch() {
        let mut t = IrqTree::new();
        assert!(!t.raise(IrqGroup::Gt0, 1));
        assert_eq!(t.read(GT0_IIR), Some(0));
    }

    #[test]
    fn propagation_and_acknowledge_like_i915() {
        let mut t = IrqTree::new();
        t.write(GT0_IMR, !(gt::USER | gt::CONTEXT_SWITCH) & !((gt::USER | gt::CONTEXT_SWITCH) << 16));
        t.write(GT0_IER, (gt::USER | gt::CONTEXT_SWITCH) * 0x1_0001);
        assert_eq!(t.write(MASTER_IRQ, MASTER_IRQ_CONTROL), Some(false));
        assert!(t.raise_engine(Engine::Bcs, true, Events::USER_INTERRUPT));
        assert_eq!(t.read(GT0_IIR), Some((gt::USER | gt::CONTEXT_SWITCH) << 16));
        // The handler: disable, read master, clear IIR, enable.
        assert_eq!(t.write(MASTER_IRQ, 0), Some(false));
        assert_eq!(t.read(MASTER_IRQ), Some(1 << 1), "blitter half of GT0 pending");
        let iir = t.read(GT0_IIR).unwrap_or(0);
        t.write(GT0_IIR, iir);
        assert_eq!(t.write(MASTER_IRQ, MASTER_IRQ_CONTROL), Some(false), "nothing left");
        // An event while disabled is delivered at re-enable.
        t.write(MASTER_IRQ, 0);
        assert!(!t.raise_engine(Engine::Rcs, true, Events::empty()));
        assert_eq!(t.write(MASTER_IRQ, MASTER_IRQ_CONTROL), Some(true));
        assert_eq!(t.read(MASTER_IRQ), Some(MASTER_IRQ_CONTROL | 1));
    }

    #[test]
    fn ier_gates_propagation_not_latching() {
        let mut t = IrqTree::new();
        t.write(MASTER_IRQ, MASTER_IRQ_CONTROL);
        t.write(IrqGroup::Gt3.isr() + 4, 0);
        assert!(!t.raise_engine(Engine::Vecs, false, Events::FLUSH_DW_NOTIFY));
        assert_eq!(t.read(IrqGroup::Gt3.isr() + 8), Some(gt::NOTIFY));
        assert_eq!(t.write(IrqGroup::Gt3.isr() + 0xc, gt::NOTIFY), Some(true));
        assert_eq!(t.read(MASTER_IRQ), Some(MASTER_IRQ_CONTROL | 1 << 6));
        t.write(IrqGroup::Gt3.isr(), u32::MAX);
        assert_eq!(t.read(IrqGroup::Gt3.isr()), Some(0), "ISR is read only");
        assert!(IrqTree::owns(SDE_ISR + 0xc) && !IrqTree::owns(SDE_ISR + 0x10) && !IrqTree::owns(GT_ISR0 + 2));
    }
}
