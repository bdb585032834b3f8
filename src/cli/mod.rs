//! Subcommands of the `shadowgpu` binary.

pub mod scan;
#[cfg(feature = "vfio-user")]
pub mod serve;
