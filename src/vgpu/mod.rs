//! One vGPU's device model: PCI configuration space ([`cfg`](mod@cfg)), the BAR0 register file
//! ([`regs`], dispatched in [`mmio`]), the interrupt tree ([`irq`]), PVINFO, the OpRegion
//! ([`opregion`]), the aperture, resets ([`device`]) and the submission side ([`engines`]):
//! ELSP writes become scanned workloads on the scheduler, completions become write-backs, CSB
//! events and interrupts.
//!
//! A VMM reaches a vGPU through the [`mdev`](crate::mdev) frontend, which names its regions and
//! interrupts the way VFIO does.

pub mod cfg;
pub mod device;
pub mod engines;
pub mod fuzzing;
pub mod irq;
pub mod mmio;
pub mod opregion;
pub mod regs;
#[cfg(test)]
mod tests;

pub use device::{DeviceError, InterruptSink, Vgpu, VgpuParams, BAR0_SIZE};
pub use engines::{EngineIrq, VgpuConfig, VgpuEngines, VgpuError};
pub use regs::{Failsafe, UnknownReg};
