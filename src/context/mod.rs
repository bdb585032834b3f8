//! Logical ring contexts: reading the guest's context image, building the shadow context from it
//! and writing results back after completion.

pub mod fuzzing;
pub mod image;
pub mod shadow;

pub use image::{context_size, read_guest_context, ContextError, GuestContext, RingRegs};
pub use shadow::{Populated, ShadowContext, ShadowContextError, ShadowPlan};
