//! Graphics memory: the partition of a physical GPU's GGTT into the host's reserve and per-vGPU
//! windows (aperture and hidden) plus fence registers, and each vGPU's virtual GGTT.
//!
//! `ggtt` keeps each vGPU's GGTT entries and mirrors them into the host GGTT; `ppgtt` shadows
//! the guest's per-process page tables (see docs/architecture.md).

pub mod fuzzing;
pub mod ggtt;
pub mod partition;
pub mod ppgtt;

pub use ggtt::{DmaMapper, GgttError, HostGgtt, VirtualGgtt};
pub use partition::{GmAllocation, GmAllocator, GmLayout, GmRequest, HostReserve, PartitionError};
pub use ppgtt::{PageTracker, PpgttError, PpgttRoot, ShadowMemory, ShadowPpgtt, ShadowRoot};
