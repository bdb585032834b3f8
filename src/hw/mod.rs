//! Hardware facts per platform: device IDs, generations and engines, register offsets and the
//! PVINFO layout.
//!
//! Nothing in this module has behaviour beyond looking facts up; the layers above decide what to do
//! with them.

mod engine;
pub mod lrc;
pub mod nonpriv;
mod platform;
pub mod pvinfo;
pub mod reg;

pub use engine::{Engine, EngineMask};

/// BAR0 layout shared by every Gen8/Gen9 part.
pub mod bar0 {
    /// Offset of the GGTT (8-byte entries) in BAR0.
    pub const GTT_OFFSET: u64 = 8 << 20;
    /// GDRST: graphics device reset control (engine bits from [`Engine::gdrst_bit`](super::Engine::gdrst_bit)).
    pub const GDRST: u64 = 0x941c;
}
pub use platform::{Device, Gen, GtLevel, Platform, PlatformError, DEVICES};
