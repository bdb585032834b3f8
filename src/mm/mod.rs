//! Graphics memory: the partition of a physical GPU's GGTT into the host's reserve and per-vGPU
//! windows (aperture and hidden) plus fence registers.
//!
//! The virtual GGTT and the shadow PPGTT build on this partition (see docs/architecture.md).

pub mod partition;

pub use partition::{GmAllocation, GmAllocator, GmLayout, GmRequest, HostReserve, PartitionError};
