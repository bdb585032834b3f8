//! Logical ring contexts: reading the guest's context image, and (next) building the shadow
//! context from it and writing results back after completion.

pub mod image;

pub use image::{context_size, ContextError, GuestContext, RingRegs};
