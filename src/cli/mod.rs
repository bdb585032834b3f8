//! Subcommands of the `shadowgpu` binary.

pub mod scan;
