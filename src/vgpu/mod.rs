//! One vGPU's device model. [`engines`] is its submission side: ELSP writes become scanned
//! workloads on the scheduler, completions become write-backs, CSB events and interrupts.
//! (The PCI and MMIO surfaces that reach it build on this.)

pub mod engines;

pub use engines::{EngineIrq, VgpuConfig, VgpuEngines, VgpuError};
