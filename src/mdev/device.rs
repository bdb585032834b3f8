//! The VFIO-like face of one vGPU: regions by index (configuration space, BARs, OpRegion) with
//! sizes and flags, interrupts (INTx, MSI) wired to eventfds or callbacks, read/write by region
//! and offset, and reset. This is the one place a VMM integrates; `mdev::vfio_user` serves the
//! same interface over a socket.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use vm_memory::GuestAddressSpace;

use super::manager::Shared;
use super::notify::{EventfdSink, NotifyError};
use crate::vgpu::cfg::{BAR4_SIZE, CFG_SIZE};
use crate::vgpu::opregion::OPREGION_SIZE;
use crate::vgpu::{DeviceError, Vgpu, BAR0_SIZE};

/// Region index of BAR0 (registers and GTT).
pub const REGION_BAR0: u32 = 0;
/// Region index of BAR2 (the aperture).
pub const REGION_BAR2: u32 = 2;
/// Region index of BAR4 (I/O: MMIO index/data).
pub const REGION_BAR4: u32 = 4;
/// Region index of the expansion ROM (none).
pub const REGION_ROM: u32 = 6;
/// Region index of the configuration space.
pub const REGION_CONFIG: u32 = 7;
/// Region index of legacy VGA (none).
pub const REGION_VGA: u32 = 8;
/// Region index of the OpRegion (device specific, read only; the VMM copies it into guest memory).
pub const REGION_OPREGION: u32 = 9;
/// Number of regions.
pub const NUM_REGIONS: u32 = 10;

/// Interrupt index of INTx.
pub const IRQ_INTX: u32 = 0;
/// Interrupt index of MSI.
pub const IRQ_MSI: u32 = 1;
/// Number of interrupt indexes (INTx, MSI, MSI-X, error, request as in VFIO; the last three
/// have no vectors).
pub const NUM_IRQS: u32 = 5;

bitflags::bitflags! {
    /// Region flags (values as VFIO's).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct RegionFlags: u32 {
        /// Readable.
        const READ = 1 << 0;
        /// Writable.
        const WRITE = 1 << 1;
        /// The VMM may map it (or the parts in `mappable`) into the guest.
        const MMAP = 1 << 2;
    }

    /// Interrupt flags (values as VFIO's).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct IrqFlags: u32 {
        /// Signalled through an eventfd.
        const EVENTFD = 1 << 0;
        /// Can be masked.
        const MASKABLE = 1 << 1;
        /// Masked by the device when it fires (INTx).
        const AUTOMASKED = 1 << 2;
        /// The vector count is fixed.
        const NORESIZE = 1 << 3;
    }
}

/// One region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Index.
    pub index: u32,
    /// What it is.
    pub name: &'static str,
    /// Size in bytes (0: absent).
    pub size: u64,
    /// Flags.
    pub flags: RegionFlags,
    /// Parts a VMM could map straight into the guest when the backend provides the memory
    /// (`(offset, size)`): the vGPU's slice of the aperture. Everything is also reachable by
    /// read/write (the trap path, which the software GPU always uses).
    pub mappable: Vec<(u64, u64)>,
}

/// One interrupt index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// Index.
    pub index: u32,
    /// Vectors.
    pub count: u32,
    /// Flags.
    pub flags: IrqFlags,
}

/// Where an interrupt goes.
pub enum IrqTrigger {
    /// A callback (an in-process VMM injects the interrupt). It is called on the thread that
    /// raises the interrupt (an engine thread shared by every vGPU, or a vCPU), with no lock of
    /// the device held, so it must not block.
    Callback(Arc<dyn Fn() + Send + Sync>),
    /// An eventfd (KVM irqfd, or a vfio-user client's eventfd): a thread of the device writes 1
    /// to it, so a VMM that stops reading it stalls nothing but that thread. Anything but an
    /// eventfd is refused.
    Eventfd(std::fs::File),
}

impl std::fmt::Debug for IrqTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IrqTrigger::Callback(_) => f.write_str("Callback"),
            IrqTrigger::Eventfd(file) => write!(f, "Eventfd({file:?})"),
        }
    }
}

/// A wired interrupt.
enum Sink {
    Callback(Arc<dyn Fn() + Send + Sync>),
    Eventfd(EventfdSink),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Callback(_) => f.write_str("Callback"),
            Sink::Eventfd(s) => s.fmt(f),
        }
    }
}

impl Sink {
    fn new(trigger: IrqTrigger, name: String) -> Result<Self, NotifyError> {
        Ok(match trigger {
            IrqTrigger::Callback(cb) => Sink::Callback(cb),
            IrqTrigger::Eventfd(file) => Sink::Eventfd(EventfdSink::new(file, name)?),
        })
    }

    /// Raises the interrupt, or returns the callback to call once the wiring lock is released.
    fn fire(&self) -> Option<Arc<dyn Fn() + Send + Sync>> {
        match self {
            Sink::Callback(cb) => Some(cb.clone()),
            Sink::Eventfd(s) => {
                s.signal();
                None
            }
        }
    }
}

/// Errors of frontend calls.
#[derive(Debug, thiserror::Error)]
pub enum MdevError {
    /// No such region, or an absent one.
    #[error("region {0} does not exist")]
    NoRegion(u32),
    /// An access past the region's end.
    #[error("region {region}: {len} bytes at {offset:#x} exceed its {size} bytes")]
    OutOfRange {
        /// Region.
        region: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Region size.
        size: u64,
    },
    /// A write to a read-only region.
    #[error("region {0} is read only")]
    ReadOnly(u32),
    /// No such interrupt index (or it has no vectors).
    #[error("interrupt index {0} has no vectors")]
    NoIrq(u32),
    /// The device refused the access.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// An interrupt trigger was refused.
    #[error(transparent)]
    Irq(#[from] NotifyError),
}

#[derive(Debug, Default)]
struct Wiring {
    msi: Option<Sink>,
    intx: Option<Sink>,
    intx_masked: bool,
}

impl Wiring {
    /// Raises the wired interrupt (MSI, else INTx while unmasked); returns a callback to call
    /// after the wiring lock is released.
    fn fire(&mut self) -> Option<Arc<dyn Fn() + Send + Sync>> {
        if let Some(m) = &self.msi {
            m.fire()
        } else if let (Some(i), false) = (&self.intx, self.intx_masked) {
            self.intx_masked = true;
            i.fire()
        } else {
            None
        }
    }
}

/// Raises `wiring`'s interrupt; a callback runs with no lock held.
fn fire(wiring: &Mutex<Wiring>) {
    let callback = wiring.lock().fire();
    if let Some(cb) = callback {
        cb();
    }
}

/// One vGPU behind its VFIO-like interface. Dropping it destroys the vGPU and returns its
/// resources to the GPU.
pub struct MdevDevice<A> {
    vgpu: Vgpu<A>,
    wiring: Arc<Mutex<Wiring>>,
    io_index: AtomicU32,
    _release: Release,
}

impl<A> std::fmt::Debug for MdevDevice<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdevDevice").field("vgpu", &self.vgpu).finish()
    }
}

/// Returns a vGPU's resources to its manager; declared after the vGPU in [`MdevDevice`], so it
/// runs once the vGPU has left the scheduler and reset its GGTT windows.
struct Release {
    manager: Option<Arc<Shared>>,
    id: crate::sched::VgpuId,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(m) = self.manager.take() {
            m.release(self.id);
        }
    }
}

/// Splits `[offset, offset + len)` into naturally aligned accesses of at most 8 bytes.
fn accesses(offset: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset.wrapping_add(done as u64);
        let n = [8usize, 4, 2, 1].into_iter().find(|&n| n <= len - done && at % n as u64 == 0).unwrap_or(1);
        let r = done..done + n;
        done += n;
        Some((at, r))
    })
}

impl<A> MdevDevice<A>
where
    A: GuestAddressSpace + Send + Sync + 'static,
    A::M: Send + Sync,
{
    /// Wraps a vGPU (the manager passes itself so the vGPU's resources return when dropped).
    pub(crate) fn new(vgpu: Vgpu<A>, manager: Option<Arc<Shared>>) -> Self {
        let wiring: Arc<Mutex<Wiring>> = Arc::default();
        let w = wiring.clone();
        vgpu.set_interrupt_sink(Some(Arc::new(move || fire(&w))));
        let id = vgpu.params().id;
        MdevDevice { vgpu, wiring, io_index: AtomicU32::new(0), _release: Release { manager, id } }
    }

    /// The device model behind the interface.
    pub fn vgpu(&self) -> &Vgpu<A> {
        &self.vgpu
    }

    /// Region `index`, if it exists.
    pub fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        let p = self.vgpu.params();
        let (name, size, flags, mappable) = match index {
            REGION_BAR0 => ("BAR0 registers + GTT", BAR0_SIZE, rw, vec![]),
            REGION_BAR2 => {
                let ap = p.gm.windows.aperture;
                ("BAR2 aperture", p.aperture_size, rw, vec![(ap.base, ap.size)])
            }
            REGION_BAR4 => ("BAR4 MMIO index/data", BAR4_SIZE, rw, vec![]),
            REGION_CONFIG => ("PCI configuration space", CFG_SIZE as u64, rw, vec![]),
            REGION_OPREGION => ("Intel OpRegion", OPREGION_SIZE as u64, RegionFlags::READ, vec![]),
            1 | 3 | 5 | REGION_ROM | REGION_VGA => ("absent", 0, RegionFlags::empty(), vec![]),
            _ => return None,
        };
        Some(RegionInfo { index, name, size, flags, mappable })
    }

    /// Interrupt index `index`.
    pub fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let f = IrqFlags::EVENTFD;
        match index {
            IRQ_INTX => Some(IrqInfo {
                index,
                count: 1,
                flags: f | IrqFlags::MASKABLE | IrqFlags::AUTOMASKED | IrqFlags::NORESIZE,
            }),
            IRQ_MSI => Some(IrqInfo { index, count: 1, flags: f | IrqFlags::NORESIZE }),
            2..NUM_IRQS => Some(IrqInfo { index, count: 0, flags: f }),
            _ => None,
        }
    }

    fn check(&self, region: u32, offset: u64, len: usize) -> Result<RegionInfo, MdevError> {
        let info = self.region_info(region).filter(|r| r.size > 0).ok_or(MdevError::NoRegion(region))?;
        if offset.checked_add(len as u64).is_none_or(|end| end > info.size) {
            return Err(MdevError::OutOfRange { region, offset, len, size: info.size });
        }
        Ok(info)
    }

    /// Reads `data.len()` bytes of region `region` at `offset`.
    pub fn read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), MdevError> {
        self.check(region, offset, data.len())?;
        match region {
            REGION_CONFIG => self.vgpu.cfg_read(offset, data),
            REGION_BAR0 => {
                let mut first = Ok(());
                for (at, r) in accesses(offset, data.len()) {
                    if let Some(d) = data.get_mut(r) {
                        if let Err(e) = self.vgpu.mmio_read(at, d) {
                            first = first.and(Err(e));
                        }
                    }
                }
                first?
            }
            REGION_BAR2 => self.vgpu.aperture_read(offset, data)?,
            REGION_BAR4 => self.io_read(offset, data)?,
            REGION_OPREGION => {
                let o = offset as usize;
                if let Some(s) = self.vgpu.opregion().get(o..o + data.len()) {
                    data.copy_from_slice(s);
                }
            }
            _ => return Err(MdevError::NoRegion(region)),
        }
        Ok(())
    }

    /// Writes `data` to region `region` at `offset`.
    pub fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), MdevError> {
        let info = self.check(region, offset, data.len())?;
        if !info.flags.contains(RegionFlags::WRITE) {
            return Err(MdevError::ReadOnly(region));
        }
        match region {
            REGION_CONFIG => self.vgpu.cfg_write(offset, data),
            REGION_BAR0 => {
                let mut first = Ok(());
                for (at, r) in accesses(offset, data.len()) {
                    if let Some(d) = data.get(r) {
                        if let Err(e) = self.vgpu.mmio_write(at, d) {
                            first = first.and(Err(e));
                        }
                    }
                }
                first?
            }
            REGION_BAR2 => self.vgpu.aperture_write(offset, data)?,
            REGION_BAR4 => self.io_write(offset, data)?,
            _ => return Err(MdevError::NoRegion(region)),
        }
        Ok(())
    }

    /// BAR4: dword 0 selects a BAR0 offset, dword 1 reads or writes it.
    fn io_read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        data.fill(0);
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.io_index.load(Ordering::Relaxed).to_le_bytes()),
            (4, 4) => self.vgpu.mmio_read(u64::from(self.io_index.load(Ordering::Relaxed)), data)?,
            _ => {}
        }
        Ok(())
    }

    fn io_write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let Ok(v) = <[u8; 4]>::try_from(data) else { return Ok(()) };
        match offset {
            0 => self.io_index.store(u32::from_le_bytes(v), Ordering::Relaxed),
            4 => self.vgpu.mmio_write(u64::from(self.io_index.load(Ordering::Relaxed)), data)?,
            _ => {}
        }
        Ok(())
    }

    /// Wires interrupt `index` (INTx or MSI) to `trigger`, or unwires it with `None`. With MSI
    /// wired, interrupts go there; otherwise to INTx while it is unmasked.
    pub fn set_irq(&self, index: u32, trigger: Option<IrqTrigger>) -> Result<(), MdevError> {
        if index != IRQ_INTX && index != IRQ_MSI {
            return Err(MdevError::NoIrq(index));
        }
        let name = format!("sgpu-irq{}-{index}", self.vgpu.params().id);
        let trigger = trigger.map(|t| Sink::new(t, name)).transpose()?;
        let mut w = self.wiring.lock();
        match index {
            IRQ_INTX => {
                w.intx = trigger;
                w.intx_masked = false;
            }
            IRQ_MSI => w.msi = trigger,
            _ => return Err(MdevError::NoIrq(index)),
        }
        Ok(())
    }

    /// Fires interrupt `index`'s trigger once, whatever the device's state (VFIO's "trigger with
    /// no data", used by VMMs to test the wiring).
    pub fn fire_irq(&self, index: u32) {
        let callback = {
            let w = self.wiring.lock();
            match index {
                IRQ_MSI => w.msi.as_ref(),
                IRQ_INTX => w.intx.as_ref(),
                _ => None,
            }
            .and_then(Sink::fire)
        };
        if let Some(cb) = callback {
            cb();
        }
    }

    /// Masks or unmasks INTx (the VMM unmasks after the guest's end of interrupt).
    pub fn mask_intx(&self, masked: bool) {
        let fire = {
            let mut w = self.wiring.lock();
            w.intx_masked = masked;
            !masked && w.msi.is_none()
        };
        // Level semantics: a still-asserted interrupt fires again on unmask.
        if fire && self.vgpu.irq_asserted() {
            self::fire(&self.wiring);
        }
    }

    /// Device reset (VFIO_DEVICE_RESET): the vGPU returns to its reset state; interrupt wiring
    /// stays.
    pub fn reset(&self) -> Result<(), MdevError> {
        Ok(self.vgpu.reset().map_err(DeviceError::from)?)
    }
}
