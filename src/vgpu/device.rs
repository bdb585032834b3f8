//! One vGPU as a PCI device: configuration space, BAR0 (registers, PVINFO, GTT), BAR2 (the
//! aperture), the interrupt tree, the OpRegion, and resets. The BAR0 register dispatch is in
//! [`super::mmio`].
//!
//! Every method takes `&self` and may be called from any VMM thread. Locks (taken in this order,
//! never two of the same level): the configuration space; the register state; the submission
//! side's engine and memory locks (inside [`VgpuEngines`]); the interrupt tree. Interrupts are
//! delivered after the tree's lock is released.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use vm_memory::{Bytes, GuestAddressSpace};

use super::cfg::{CfgEffects, ConfigSpace};
use super::engines::{EngineIrq, VgpuConfig, VgpuEngines, VgpuError};
use super::irq::IrqTree;
use super::opregion::OpRegion;
use super::regs::{Failsafe, RegState, RegTable, UnknownReg};
use crate::cmd::{page_chunks, ScanLimits};
use crate::hw::pvinfo::{GmadrRange, VgtIf};
use crate::hw::Device;
use crate::mm::GmAllocation;
use crate::sched::{Scheduler, VgpuId};

/// Size of BAR0: 2 MiB of registers, the GTT at 8 MiB.
pub const BAR0_SIZE: u64 = 16 << 20;

/// Errors of one guest access to the device. The access has no effect beyond what the error says
/// (reads return all ones or zeros); the vGPU keeps running unless the error says it hung.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An access of a size or alignment the region does not take.
    #[error("{region} access of {size} bytes at {offset:#x}: {why}")]
    BadAccess {
        /// Region name.
        region: &'static str,
        /// Offset in the region.
        offset: u64,
        /// Access size.
        size: usize,
        /// Why.
        why: &'static str,
    },
    /// The submission side refused the access (a rejected workload leaves the engine hung).
    #[error(transparent)]
    Engines(#[from] VgpuError),
    /// The guest broke the paravirtual contract; the vGPU is in failsafe mode until reset.
    #[error("failsafe mode entered: {0}")]
    Failsafe(Failsafe),
    /// A fence register the vGPU does not own.
    #[error("fence register {index} is not one of the vGPU's {owned}")]
    Fence {
        /// Guest fence number.
        index: u32,
        /// Fences owned.
        owned: usize,
    },
    /// An aperture access outside the vGPU's aperture window or to an unmapped GGTT page.
    #[error("aperture access at {gma:#x}: {why}")]
    Aperture {
        /// Graphics address.
        gma: u64,
        /// Why.
        why: &'static str,
    },
}

/// What a vGPU is made of.
#[derive(Clone, Debug)]
pub struct VgpuParams {
    /// Id (scheduler and PVINFO).
    pub id: VgpuId,
    /// The device it presents.
    pub device: Device,
    /// PCI revision.
    pub revision: u8,
    /// Its graphics memory windows and fences.
    pub gm: GmAllocation,
    /// Size of the aperture BAR (the host's aperture).
    pub aperture_size: u64,
    /// GGTT address space of the host (sets the GTT size in GMCH control).
    pub ggtt_size: u64,
    /// Scheduling weight, 1..=16.
    pub weight: u8,
    /// Scan bounds per workload.
    pub limits: ScanLimits,
}

/// Where interrupts go: called whenever the vGPU's interrupt is asserted (edge: once per event
/// that finds the master enable set and a source pending).
pub type InterruptSink = Arc<dyn Fn() + Send + Sync>;

/// The interrupt tree and where it delivers.
pub(crate) struct IrqLine {
    pub(crate) tree: Mutex<IrqTree>,
    sink: RwLock<Option<InterruptSink>>,
    delivered: AtomicU64,
}

impl IrqLine {
    pub(crate) fn deliver(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let sink = self.sink.read().clone();
        if let Some(s) = sink {
            s();
        }
    }

    /// Raises a context-switch event of `engine` as a completion would.
    #[cfg(test)]
    pub(crate) fn engine_irq_for_test(&self, engine: crate::hw::Engine) {
        self.engine(EngineIrq { engine, context_switch: true, events: crate::cmd::Events::empty() });
    }

    fn engine(&self, e: EngineIrq) {
        let asserted = self.tree.lock().raise_engine(e.engine, e.context_switch, e.events);
        if asserted {
            self.deliver();
        }
    }
}

/// BAR0 state besides the engines: the register values and the PV contract.
#[derive(Debug)]
pub(crate) struct Bar0State {
    pub(crate) regs: RegState,
    pub(crate) pv: VgtIf,
    /// The guest read PVINFO (it is GVT-aware).
    pub(crate) pv_notified: bool,
    pub(crate) failsafe: Option<Failsafe>,
}

/// One vGPU.
pub struct Vgpu<A> {
    pub(crate) params: VgpuParams,
    pub(crate) engines: VgpuEngines<A>,
    cfg: Mutex<ConfigSpace>,
    pub(crate) bar0: Mutex<Bar0State>,
    pub(crate) irq: Arc<IrqLine>,
    opregion: OpRegion,
    pub(crate) born: Instant,
    /// Power state D3hot entered since the last reset (an S3 resume keeps graphics memory).
    d3: Mutex<bool>,
}

impl<A> std::fmt::Debug for Vgpu<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vgpu").field("id", &self.params.id).field("device", &self.params.device).finish()
    }
}

/// The PVINFO page a vGPU made of `p` presents at reset.
fn pvinfo(p: &VgpuParams) -> VgtIf {
    let r = |g: crate::cmd::GmRange| GmadrRange { base: g.base as u32, size: g.size as u32 };
    VgtIf::new(p.id, r(p.gm.windows.aperture), r(p.gm.windows.hidden), p.gm.fences.len() as u32)
}

impl<A> Vgpu<A>
where
    A: GuestAddressSpace + Send + Sync + 'static,
    A::M: Send + Sync,
{
    /// Creates a vGPU with guest memory `mem` on the scheduler's GPU.
    pub fn new(params: VgpuParams, mem: A, sched: Arc<Scheduler>) -> Result<Self, VgpuError> {
        let irq = Arc::new(IrqLine { tree: Mutex::new(IrqTree::new()), sink: RwLock::new(None), delivered: 0.into() });
        let line = irq.clone();
        let vcfg = VgpuConfig {
            id: params.id,
            gen: params.device.platform.gen(),
            windows: params.gm.windows,
            limits: params.limits,
            weight: params.weight,
        };
        let engines = VgpuEngines::new(vcfg, mem, sched, move |e| line.engine(e))?;
        let cfg = ConfigSpace::new(&params.device, params.revision, BAR0_SIZE, params.aperture_size, params.ggtt_size);
        let table = RegTable::get(&params.device);
        let bar0 = Bar0State { regs: RegState::new(table), pv: pvinfo(&params), pv_notified: false, failsafe: None };
        Ok(Vgpu {
            opregion: OpRegion::new(params.device.platform.short_name()),
            params,
            engines,
            cfg: Mutex::new(cfg),
            bar0: Mutex::new(bar0),
            irq,
            born: Instant::now(),
            d3: Mutex::new(false),
        })
    }

    /// What the vGPU was made of.
    pub fn params(&self) -> &VgpuParams {
        &self.params
    }

    /// The submission side (statistics, idle waits).
    pub fn engines(&self) -> &VgpuEngines<A> {
        &self.engines
    }

    /// Sets where interrupts go (`None`: nowhere; events still latch in the tree).
    pub fn set_interrupt_sink(&self, sink: Option<InterruptSink>) {
        *self.irq.sink.write() = sink;
    }

    /// Whether the interrupt is asserted now (enabled and a source pending).
    pub fn irq_asserted(&self) -> bool {
        self.irq.tree.lock().asserted()
    }

    /// Interrupts delivered since creation.
    pub fn interrupts_delivered(&self) -> u64 {
        self.irq.delivered.load(Ordering::Relaxed)
    }

    /// Reads configuration space.
    pub fn cfg_read(&self, offset: u64, data: &mut [u8]) {
        let o = usize::try_from(offset).unwrap_or(usize::MAX);
        self.cfg.lock().read(o, data);
    }

    /// Writes configuration space.
    pub fn cfg_write(&self, offset: u64, data: &[u8]) {
        let o = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut cfg = self.cfg.lock();
        let fx: CfgEffects = cfg.write(o, data);
        if fx.entered_d3 {
            *self.d3.lock() = true;
        }
        if fx.swsci {
            let asls = cfg.asls();
            if asls != 0 {
                OpRegion::serve_swsci(&*self.engines.memory().memory(), asls);
            }
            cfg.swsci_done();
        }
    }

    /// The OpRegion the VMM places in guest memory (then the guest or firmware writes ASLS).
    pub fn opregion(&self) -> &[u8] {
        self.opregion.bytes()
    }

    /// Whether MSI is enabled in the configuration space.
    pub fn msi_enabled(&self) -> bool {
        self.cfg.lock().msi_enabled()
    }

    /// The failsafe state: `Some(why)` if the guest broke the PV contract.
    pub fn failsafe(&self) -> Option<Failsafe> {
        self.bar0.lock().failsafe
    }

    /// Registers the guest touched that the model does not track.
    pub fn unknown_registers(&self) -> Vec<UnknownReg> {
        self.bar0.lock().regs.unknown()
    }

    /// Device-level reset (VM reboot, FLR, the VMM's reset): configuration space, registers,
    /// PVINFO, interrupts and execlists to their reset state, queued work dropped, shadow page
    /// tables and GGTT entries released, failsafe cleared. After a D3hot entry (S3 suspend) the
    /// GGTT and page-table shadows are kept, as GVT-g does.
    pub fn reset(&self) -> Result<(), VgpuError> {
        let keep_memory = std::mem::take(&mut *self.d3.lock());
        let mut cfg = self.cfg.lock();
        cfg.reset();
        {
            let mut b = self.bar0.lock();
            b.regs.reset(0, crate::hw::reg::MMIO_SIZE);
            b.pv = pvinfo(&self.params);
            b.pv_notified = false;
            b.failsafe = None;
        }
        let r = if keep_memory {
            self.engines.reset_engines(self.params.device.engines())
        } else {
            self.engines.reset_device()
        };
        self.irq.tree.lock().reset();
        r
    }

    /// Reads the aperture (BAR2) at `offset`: the guest pages its GGTT maps there. Bytes outside
    /// the vGPU's aperture window or on unmapped pages read as all ones.
    pub fn aperture_read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        data.fill(0xff);
        let mem = self.engines.memory().memory();
        self.aperture_pages(offset, data.len(), |gpa, r| {
            data.get_mut(r).is_some_and(|d| mem.read_slice(d, gpa).is_ok())
        })
    }

    /// Writes the aperture (BAR2) at `offset`; bytes outside the vGPU's aperture window or on
    /// unmapped pages are dropped.
    pub fn aperture_write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let mem = self.engines.memory().memory();
        self.aperture_pages(offset, data.len(), |gpa, r| data.get(r).is_some_and(|d| mem.write_slice(d, gpa).is_ok()))
    }

    fn aperture_pages(
        &self,
        gma: u64,
        len: usize,
        mut f: impl FnMut(vm_memory::GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> Result<(), DeviceError> {
        if !self.params.gm.windows.aperture.contains(gma, len as u64) {
            return Err(DeviceError::Aperture { gma, why: "outside the vGPU's aperture window" });
        }
        for (page_gma, r) in page_chunks(gma, len) {
            let Some(gpa) = self.engines.translate_ggtt(page_gma) else {
                return Err(DeviceError::Aperture { gma: page_gma, why: "GGTT entry not present" });
            };
            if !f(gpa, r) {
                return Err(DeviceError::Aperture { gma: page_gma, why: "mapped page is not guest memory" });
            }
        }
        Ok(())
    }
}
