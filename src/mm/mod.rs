//! Graphics memory: the partition of a physical GPU's GGTT into the host's reserve and per-vGPU
//! windows (aperture and hidden) plus fence registers, and each vGPU's virtual GGTT.
//!
//! `ggtt` keeps each vGPU's GGTT entries and mirrors them into the host GGTT. The shadow PPGTT
//! builds on both (see docs/architecture.md).

pub mod ggtt;
pub mod partition;

pub use ggtt::{DmaMapper, GgttError, HostGgtt, VirtualGgtt};
pub use partition::{GmAllocation, GmAllocator, GmLayout, GmRequest, HostReserve, PartitionError};
