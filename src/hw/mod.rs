//! Hardware facts per platform: device IDs, generations and engines.
//!
//! Nothing in this module has behaviour beyond looking facts up; the layers above decide what to do
//! with them.

mod engine;
mod platform;

pub use engine::{Engine, EngineMask};
pub use platform::{Device, Gen, GtLevel, Platform, PlatformError, DEVICES};
