//! shadowgpu: mediated pass-through vGPUs for Intel Gen8/Gen9 integrated GPUs.
#![deny(missing_docs)]

pub mod cmd;
pub mod context;
pub mod demo;
pub mod execlist;
pub mod guest;
pub mod host;
pub mod hw;
pub mod mdev;
pub mod mm;
pub mod sched;
pub mod vgpu;
