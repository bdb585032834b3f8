//! The VMM-facing frontend: vGPU [`types`], the [`GpuManager`] that creates and destroys vGPUs on
//! one physical GPU, and per vGPU an [`MdevDevice`] with VFIO-like regions and interrupts. With
//! feature `vfio-user`, `mdev::vfio_user` serves devices to external VMMs over a socket.

pub mod device;
pub mod manager;
#[cfg(feature = "vfio-user")]
pub mod memguard;
pub mod notify;
pub mod types;
#[cfg(feature = "vfio-user")]
pub mod vfio_user;

pub use device::{
    IrqFlags, IrqInfo, IrqTrigger, MdevDevice, MdevError, RegionFlags, RegionInfo, IRQ_INTX, IRQ_MSI, NUM_IRQS,
    NUM_REGIONS, REGION_BAR0, REGION_BAR2, REGION_BAR4, REGION_CONFIG, REGION_OPREGION, REGION_ROM, REGION_VGA,
};
pub use manager::{GpuInfo, GpuManager, ManagerError, TypeAvailability, VgpuSummary, MAX_VGPUS};
pub use types::{VgpuType, VgpuTypeError};
