//! The software GPU seen through BAR0, as a driver of a real iGPU sees it: the GGTT at +8 MiB,
//! each engine's ELSP, CSB and CSB pointer, GDRST, and every other register in the engines'
//! register files. A submission runs to completion inside the fourth ELSP write: the context
//! image is loaded from memory at its LRCA, executed and saved back, and the CSB gets the
//! idle-to-active and the complete-and-idle events (none if the engine hung: it stays busy until
//! GDRST resets it).

use std::collections::HashMap;

use parking_lot::Mutex;
use zerocopy::IntoBytes;

use super::exec::{Exec, Stop};
use super::{run_context, SimGpu};
use crate::context::context_size;
use crate::hw::Engine;

use crate::execlist::reg::{CSB as CSB32, CSB_PTR as CSB_PTR32, ELSP as ELSP32};
pub use crate::hw::bar0::{GDRST, GTT_OFFSET};

const ELSP: u64 = ELSP32 as u64;
const CSB: u64 = CSB32 as u64;
const CSB_PTR: u64 = CSB_PTR32 as u64;

/// Per-engine execlist port state of the register-level model.
#[derive(Debug, Default)]
pub(super) struct Port {
    latch: Vec<u32>,
    csb: [u64; 6],
    wp: u8,
    rp: u8,
}

/// The register-level state: execlist ports and GTT half-writes.
#[derive(Debug, Default)]
pub(super) struct MmioState {
    ports: HashMap<usize, Port>,
    gtt_low: HashMap<u64, u32>,
}

impl SimGpu {
    fn engine_at(&self, off: u64) -> Option<(Engine, u64)> {
        Engine::ALL.into_iter().filter(|&e| self.cfg.engines.has(e)).find_map(|e| {
            let base = u64::from(e.mmio_base());
            (base..base + 0x1000).contains(&off).then(|| (e, off - base))
        })
    }

    /// A 32-bit BAR0 read.
    pub fn mmio_read(&self, off: u64) -> u32 {
        if off >= GTT_OFFSET {
            let i = (off - GTT_OFFSET) / 8;
            let pte = self.mem.read_pte(i);
            return if off % 8 == 0 { pte as u32 } else { (pte >> 32) as u32 };
        }
        if off == GDRST {
            return 0; // resets complete at once
        }
        let st = self.mmio.lock();
        if let Some((e, rel)) = self.engine_at(off) {
            let port = st.ports.get(&e.index());
            if (CSB..CSB + 48).contains(&rel) {
                let entry = port.and_then(|p| p.csb.get(((rel - CSB) / 8) as usize).copied()).unwrap_or(0);
                return if rel % 8 == 0 { entry as u32 } else { (entry >> 32) as u32 };
            }
            if rel == CSB_PTR {
                return port.map_or(0x0707, |p| u32::from(p.rp) << 8 | u32::from(p.wp));
            }
        }
        drop(st);
        let e = self.engine_at(off).map_or(Engine::Rcs, |(e, _)| e);
        crate::host::HostGpu::read_reg(self, e, off as u32)
    }

    /// A 32-bit BAR0 write.
    pub fn mmio_write(&self, off: u64, v: u32) {
        if off >= GTT_OFFSET {
            let i = (off - GTT_OFFSET) / 8;
            let mut st = self.mmio.lock();
            if off % 8 == 0 {
                st.gtt_low.insert(i, v);
            } else {
                let lo = st.gtt_low.remove(&i).unwrap_or(self.mem.read_pte(i) as u32);
                self.mem.write_pte(i, u64::from(lo) | u64::from(v) << 32);
            }
            return;
        }
        if off == GDRST {
            for e in Engine::ALL.into_iter().filter(|&e| v & 1 != 0 || v & e.gdrst_bit() != 0) {
                crate::host::HostGpu::reset_engine(self, e);
                self.mmio.lock().ports.remove(&e.index());
            }
            return;
        }
        if let Some((e, rel)) = self.engine_at(off) {
            if rel == ELSP {
                let full = {
                    let mut st = self.mmio.lock();
                    let p = st.ports.entry(e.index()).or_insert_with(|| Port { wp: 7, rp: 7, ..Port::default() });
                    p.latch.push(v);
                    (p.latch.len() == 4).then(|| std::mem::take(&mut p.latch))
                };
                if let Some(l) = full {
                    // Element 1 high, element 1 low, element 0 high, element 0 low.
                    let desc =
                        u64::from(l.get(3).copied().unwrap_or(0)) | u64::from(l.get(2).copied().unwrap_or(0)) << 32;
                    self.execute_descriptor(e, desc);
                }
                return;
            }
            if rel == CSB_PTR {
                if let Some(p) = self.mmio.lock().ports.get_mut(&e.index()) {
                    if (v >> 16) & 0x700 != 0 {
                        p.rp = ((v >> 8) & 7) as u8;
                    }
                }
                return;
            }
        }
        let e = self.engine_at(off).map_or(Engine::Rcs, |(e, _)| e);
        crate::host::HostGpu::write_reg(self, e, off as u32, v);
    }

    fn push_csb(&self, e: Engine, status: u32, id: u32) {
        let mut st = self.mmio.lock();
        let p = st.ports.entry(e.index()).or_insert_with(|| Port { wp: 7, rp: 7, ..Port::default() });
        let wp = if p.wp >= 6 { 0 } else { (p.wp + 1) % 6 };
        if let Some(c) = p.csb.get_mut(usize::from(wp)) {
            *c = u64::from(status) | u64::from(id) << 32;
        }
        p.wp = wp;
    }

    /// Loads the context at the descriptor's LRCA, runs it, saves it, posts CSB events.
    fn execute_descriptor(&self, e: Engine, desc: u64) {
        let Some(slot) = self.slot(e) else { return };
        let lrca = desc & 0xffff_f000;
        let id = (desc >> 32) as u32;
        let legacy32 = (desc >> 3) & 3 == 1;
        self.push_csb(e, 1, 0); // idle to active
        let dwords = (context_size(self.cfg.gen, e) / 4) as usize;
        let mut image = vec![0u32; dwords];
        if self.mem.read_ggtt(lrca, image.as_mut_bytes()).is_err() {
            return; // a fault: the engine hangs
        }
        let split = crate::context::shadow::RING_PART.min(dwords);
        let r = {
            let mut slot = slot.lock();
            let mut exec = Exec::new(&self.mem, &mut slot.core, &self.cfg.cost);
            exec.pphwsp = lrca;
            let (a, b) = image.split_at_mut(split);
            let r = run_context(&mut exec, (a, b), legacy32).map(|_| ());
            if r.is_ok() {
                slot.runs += 1;
            }
            r
        };
        match r {
            Ok(()) => {
                let _ = self.mem.write_ggtt(lrca, image.as_bytes());
                self.push_csb(e, (1 << 3) | (1 << 4), id); // active to idle, complete
            }
            Err(Stop::Hang(_) | Stop::Fault(_) | Stop::Preempted | Stop::Aborted | Stop::Refused(_)) => {}
        }
    }
}

/// Register-level state lives beside the engines.
pub(super) type Mmio = Mutex<MmioState>;
