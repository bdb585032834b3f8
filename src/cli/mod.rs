//! Subcommands of the `shadowgpu` binary.

pub mod demo;
pub mod scan;
#[cfg(feature = "vfio-user")]
pub mod serve;
