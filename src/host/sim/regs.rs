//! The software GPU's registers, as the hardware lays them out: each engine owns its register
//! block (its MMIO base and the next 4 KiB) and the render engine also owns the render pipeline's
//! context state; every other register is one register file the whole GPU shares. A command
//! stream that writes a shared register changes it for every engine and every context, exactly
//! the reach such a write has on a real iGPU, so a write a scanner should have refused shows up
//! here (and in [`SimGpu::stream_register_writes`](super::SimGpu::stream_register_writes)).
//!
//! Masked registers (the upper 16 bits of a write select which lower bits change) behave as
//! masked; GDRST written by a command stream resets the engines it names, stopping whatever they
//! run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use crate::hw::{reg, Engine};

/// Offsets relative to an engine's base of its masked registers: EXCC, MI_MODE, INSTPM,
/// RESET_CTL, CONTEXT_CONTROL, RING_MODE.
const MASKED_RELATIVE: [u32; 6] = [0x028, reg::ring::MI_MODE, 0x0c0, reg::ring::RESET_CTL, 0x244, reg::ring::RING_MODE];

/// Absolute offsets of the render engine's masked registers outside its register block's
/// relative list: CS_DEBUG_MODE2, CS_CHICKEN1, CACHE_MODE_0/1, GT_MODE, COMMON_SLICE_CHICKEN2,
/// HDC_CHICKEN1.
const MASKED_RENDER: [u32; 7] = [0x20d8, 0x2580, 0x7000, 0x7004, 0x7008, 0x7014, 0x7304];

/// Absolute ranges of render-pipeline state the render engine owns (only it programs them, most
/// of it per context): TR-TT, stream-out counters, cache-mode, chicken and pipeline registers,
/// the L3 configuration, half-slice and row chicken registers. `end` exclusive.
const RENDER_STATE: [(u32, u32); 6] =
    [(0x4de0, 0x4e00), (0x5000, 0x6000), (0x7000, 0x8000), (0x8300, 0x8400), (0xb000, 0xb200), (0xe000, 0xe800)];

/// Each engine's MOCS table (Gen9): 64 registers from this base.
const fn mocs_base(engine: Engine) -> u32 {
    match engine {
        Engine::Rcs => 0xc800,
        Engine::Vcs => 0xc900,
        Engine::Vcs2 => 0xca00,
        Engine::Vecs => 0xcb00,
        Engine::Bcs => 0xcc00,
    }
}

/// Most command-stream writes to shared registers remembered.
const MAX_LOGGED: usize = 4096;

/// A write a command stream made to a register it does not own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamWrite {
    /// The engine that executed it.
    pub engine: Engine,
    /// The register (absolute offset).
    pub reg: u32,
    /// The value written.
    pub value: u32,
}

/// Whether `reg` belongs to `engine` (its register block, or render state for the render engine).
pub(super) fn engine_local(engine: Engine, reg: u32) -> bool {
    let base = engine.mmio_base();
    let in_block = reg.checked_sub(base).is_some_and(|rel| rel < 0x1000);
    let mocs = reg.checked_sub(mocs_base(engine)).is_some_and(|rel| rel < 0x100);
    in_block || mocs || (engine == Engine::Rcs && RENDER_STATE.iter().any(|&(s, e)| (s..e).contains(&reg)))
}

/// Whether `reg` of `engine` is a masked register.
pub(super) fn masked(engine: Engine, reg: u32) -> bool {
    reg.checked_sub(engine.mmio_base()).is_some_and(|rel| MASKED_RELATIVE.contains(&rel))
        || (engine == Engine::Rcs && MASKED_RENDER.contains(&reg))
}

/// The value a masked register holds after `write` over `old`.
pub(super) fn apply_masked(old: u32, write: u32) -> u32 {
    let mask = write >> 16;
    (old & !mask) | (write & mask)
}

/// The registers the engines share.
#[derive(Debug, Default)]
pub(super) struct GlobalRegs {
    values: Mutex<HashMap<u32, u32>>,
    log: Mutex<Vec<StreamWrite>>,
    /// Engines (by [`Engine::mask`] bits) a command stream reset through GDRST: each stops at its
    /// next command.
    pending_reset: AtomicU32,
}

impl GlobalRegs {
    pub fn read(&self, reg: u32) -> u32 {
        self.values.lock().get(&reg).copied().unwrap_or(0)
    }

    /// A write from the host (MMIO, the register switch).
    pub fn write(&self, reg: u32, value: u32) {
        self.values.lock().insert(reg, value);
    }

    /// A write from `engine`'s command stream.
    pub fn stream_write(&self, engine: Engine, reg: u32, value: u32) {
        self.write(reg, value);
        let mut log = self.log.lock();
        if log.len() < MAX_LOGGED {
            log.push(StreamWrite { engine, reg, value });
        }
        drop(log);
        if reg == reg::GDRST {
            let named = Engine::ALL
                .into_iter()
                .filter(|e| value & reg::GRDOM_FULL != 0 || value & e.gdrst_bit() != 0)
                .fold(0, |m, e| m | u32::from(e.mask().bits()));
            self.pending_reset.fetch_or(named, Ordering::AcqRel);
        }
    }

    /// Whether a command stream reset `engine` since the last call (clears the flag).
    pub fn take_reset(&self, engine: Engine) -> bool {
        let bit = u32::from(engine.mask().bits());
        self.pending_reset.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// The command-stream writes to shared registers so far.
    pub fn stream_writes(&self) -> Vec<StreamWrite> {
        self.log.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_and_masks() {
        assert!(engine_local(Engine::Rcs, 0x2600));
        assert!(engine_local(Engine::Rcs, 0x7004));
        assert!(!engine_local(Engine::Bcs, 0x7004));
        assert!(engine_local(Engine::Bcs, 0x2_2600));
        assert!(!engine_local(Engine::Rcs, reg::GDRST));
        assert!(engine_local(Engine::Rcs, 0xc8fc) && !engine_local(Engine::Rcs, 0xcc00));
        assert!(engine_local(Engine::Bcs, 0xcc00) && engine_local(Engine::Rcs, 0x7700));
        assert!(masked(Engine::Vcs, 0x1_209c) && !masked(Engine::Vcs, 0x1_2600));
        assert!(masked(Engine::Rcs, 0x7004) && !masked(Engine::Bcs, 0x7004) && !masked(Engine::Rcs, 0x7034));
        assert_eq!(apply_masked(0xf0, 0x000f_0005), 0xf5);
        let g = GlobalRegs::default();
        g.stream_write(Engine::Bcs, reg::GDRST, Engine::Vcs.gdrst_bit());
        assert!(g.take_reset(Engine::Vcs) && !g.take_reset(Engine::Vcs) && !g.take_reset(Engine::Rcs));
        assert_eq!(g.stream_writes(), vec![StreamWrite { engine: Engine::Bcs, reg: reg::GDRST, value: 4 }]);
    }
}
