//! Platforms (Broadwell, Skylake, Kaby Lake, Coffee Lake, Comet Lake), their PCI device IDs and engines.

use std::fmt;
use std::str::FromStr;

use super::{Engine, EngineMask};

/// Errors from platform and device look-ups.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    /// The PCI device ID is not a Gen8/Gen9 part this crate supports.
    #[error("device id {0:#06x} is not a supported Gen8/Gen9 Intel GPU")]
    UnknownDevice(u16),
    /// The platform name is not one of `bdw`, `skl`, `kbl`, `cfl`, `cml`.
    #[error("unknown platform `{0}` (expected bdw, skl, kbl, cfl or cml)")]
    UnknownPlatform(String),
}

/// Graphics generation. Command formats and tables differ between the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Gen {
    /// Gen8: Broadwell.
    Gen8,
    /// Gen9: Skylake and its derivatives.
    Gen9,
}

/// A GPU platform that GVT-g style mediation supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Broadwell (Gen8).
    Broadwell,
    /// Skylake (Gen9).
    Skylake,
    /// Kaby Lake (Gen9.5).
    KabyLake,
    /// Coffee Lake, including Whiskey Lake (Gen9.5).
    CoffeeLake,
    /// Comet Lake (Gen9.5).
    CometLake,
}

impl Gen {
    /// Engine timestamp ticks (TIMESTAMP, CTX_TIMESTAMP) in `ns`: 12.5 MHz on Gen8, 12 MHz on Gen9.
    pub const fn timestamp_ticks(self, ns: u64) -> u64 {
        match self {
            Gen::Gen8 => ns / 80,
            Gen::Gen9 => ns.saturating_mul(3) / 250,
        }
    }

    /// Nanoseconds of `ticks` engine timestamp ticks.
    pub const fn timestamp_ns(self, ticks: u64) -> u64 {
        match self {
            Gen::Gen8 => ticks.saturating_mul(80),
            Gen::Gen9 => ticks.saturating_mul(250) / 3,
        }
    }
}

impl Platform {
    /// Every supported platform.
    pub const ALL: [Platform; 5] =
        [Platform::Broadwell, Platform::Skylake, Platform::KabyLake, Platform::CoffeeLake, Platform::CometLake];

    /// The platform's generation.
    pub const fn gen(self) -> Gen {
        match self {
            Platform::Broadwell => Gen::Gen8,
            _ => Gen::Gen9,
        }
    }

    /// Short name as used by i915 and on the command line.
    pub const fn short_name(self) -> &'static str {
        match self {
            Platform::Broadwell => "bdw",
            Platform::Skylake => "skl",
            Platform::KabyLake => "kbl",
            Platform::CoffeeLake => "cfl",
            Platform::CometLake => "cml",
        }
    }

    /// A representative GT2 device of this platform (the one a vGPU presents by default).
    pub fn default_device(self) -> Device {
        let id = match self {
            Platform::Broadwell => 0x1616,
            Platform::Skylake => 0x1912,
            Platform::KabyLake => 0x5912,
            Platform::CoffeeLake => 0x3e92,
            Platform::CometLake => 0x9bc5,
        };
        // The table holds every default id; the fallback keeps this total without a panic.
        Device::from_id(id).copied().unwrap_or(Device { id, platform: self, gt: GtLevel::Gt2 })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.short_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| PlatformError::UnknownPlatform(s.to_owned()))
    }
}

/// GT level of a part: how many slices/EUs, and whether a second VDBox exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GtLevel {
    /// GT1.
    Gt1,
    /// GT2.
    Gt2,
    /// GT3 (two VDBoxes).
    Gt3,
    /// GT4 (two VDBoxes).
    Gt4,
}

/// One PCI device ID and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// PCI device ID (vendor 0x8086).
    pub id: u16,
    /// Platform.
    pub platform: Platform,
    /// GT level.
    pub gt: GtLevel,
}

impl Device {
    /// Looks a PCI device ID up in [`DEVICES`].
    pub fn from_id(id: u16) -> Result<&'static Device, PlatformError> {
        DEVICES.iter().find(|d| d.id == id).ok_or(PlatformError::UnknownDevice(id))
    }

    /// The engines this device has: VCS2 only on GT3/GT4 parts.
    pub fn engines(&self) -> EngineMask {
        let all = EngineMask::RCS | EngineMask::BCS | EngineMask::VCS | EngineMask::VECS;
        if self.gt >= GtLevel::Gt3 {
            all | EngineMask::VCS2
        } else {
            all
        }
    }

    /// Whether `engine` exists on this device.
    pub fn has_engine(&self, engine: Engine) -> bool {
        self.engines().has(engine)
    }
}

const fn dev(id: u16, platform: Platform, gt: GtLevel) -> Device {
    Device { id, platform, gt }
}

use GtLevel::{Gt1, Gt2, Gt3, Gt4};
use Platform::{Broadwell as Bdw, CoffeeLake as Cfl, CometLake as Cml, KabyLake as Kbl, Skylake as Skl};

/// PCI device IDs of the supported parts (from i915's `i915_pciids.h` tables).
pub static DEVICES: &[Device] = &[
    // Broadwell
    dev(0x1602, Bdw, Gt1),
    dev(0x1606, Bdw, Gt1),
    dev(0x160a, Bdw, Gt1),
    dev(0x160b, Bdw, Gt1),
    dev(0x160d, Bdw, Gt1),
    dev(0x160e, Bdw, Gt1),
    dev(0x1612, Bdw, Gt2),
    dev(0x1616, Bdw, Gt2),
    dev(0x161a, Bdw, Gt2),
    dev(0x161b, Bdw, Gt2),
    dev(0x161d, Bdw, Gt2),
    dev(0x161e, Bdw, Gt2),
    dev(0x1622, Bdw, Gt3),
    dev(0x1626, Bdw, Gt3),
    dev(0x162a, Bdw, Gt3),
    dev(0x162b, Bdw, Gt3),
    dev(0x162d, Bdw, Gt3),
    dev(0x162e, Bdw, Gt3),
    // Skylake
    dev(0x1902, Skl, Gt1),
    dev(0x1906, Skl, Gt1),
    dev(0x190a, Skl, Gt1),
    dev(0x190b, Skl, Gt1),
    dev(0x190e, Skl, Gt1),
    dev(0x1912, Skl, Gt2),
    dev(0x1913, Skl, Gt2),
    dev(0x1915, Skl, Gt2),
    dev(0x1916, Skl, Gt2),
    dev(0x1917, Skl, Gt2),
    dev(0x191a, Skl, Gt2),
    dev(0x191b, Skl, Gt2),
    dev(0x191d, Skl, Gt2),
    dev(0x191e, Skl, Gt2),
    dev(0x1921, Skl, Gt2),
    dev(0x1923, Skl, Gt3),
    dev(0x1926, Skl, Gt3),
    dev(0x1927, Skl, Gt3),
    dev(0x192a, Skl, Gt3),
    dev(0x192b, Skl, Gt3),
    dev(0x192d, Skl, Gt3),
    dev(0x1932, Skl, Gt4),
    dev(0x193a, Skl, Gt4),
    dev(0x193b, Skl, Gt4),
    dev(0x193d, Skl, Gt4),
    // Kaby Lake
    dev(0x5902, Kbl, Gt1),
    dev(0x5906, Kbl, Gt1),
    dev(0x590a, Kbl, Gt1),
    dev(0x590b, Kbl, Gt1),
    dev(0x590e, Kbl, Gt1),
    dev(0x5908, Kbl, Gt1),
    dev(0x5912, Kbl, Gt2),
    dev(0x5916, Kbl, Gt2),
    dev(0x5917, Kbl, Gt2),
    dev(0x591a, Kbl, Gt2),
    dev(0x591b, Kbl, Gt2),
    dev(0x591d, Kbl, Gt2),
    dev(0x591e, Kbl, Gt2),
    dev(0x5921, Kbl, Gt2),
    dev(0x87c0, Kbl, Gt2),
    dev(0x5923, Kbl, Gt3),
    dev(0x5926, Kbl, Gt3),
    dev(0x5927, Kbl, Gt3),
    dev(0x593b, Kbl, Gt4),
    // Coffee Lake and Whiskey Lake
    dev(0x3e90, Cfl, Gt1),
    dev(0x3e93, Cfl, Gt1),
    dev(0x3e99, Cfl, Gt1),
    dev(0x3ea1, Cfl, Gt1),
    dev(0x3e91, Cfl, Gt2),
    dev(0x3e92, Cfl, Gt2),
    dev(0x3e94, Cfl, Gt2),
    dev(0x3e96, Cfl, Gt2),
    dev(0x3e98, Cfl, Gt2),
    dev(0x3e9a, Cfl, Gt2),
    dev(0x3e9b, Cfl, Gt2),
    dev(0x3ea0, Cfl, Gt2),
    dev(0x3ea5, Cfl, Gt3),
    dev(0x3ea6, Cfl, Gt3),
    dev(0x3ea7, Cfl, Gt3),
    dev(0x3ea8, Cfl, Gt3),
    // Comet Lake
    dev(0x9b21, Cml, Gt1),
    dev(0x9ba4, Cml, Gt1),
    dev(0x9ba8, Cml, Gt1),
    dev(0x9baa, Cml, Gt1),
    dev(0x9bac, Cml, Gt1),
    dev(0x9b41, Cml, Gt2),
    dev(0x9bc4, Cml, Gt2),
    dev(0x9bc5, Cml, Gt2),
    dev(0x9bc6, Cml, Gt2),
    dev(0x9bc8, Cml, Gt2),
    dev(0x9bca, Cml, Gt2),
    dev(0x9bcc, Cml, Gt2),
    dev(0x9be6, Cml, Gt2),
    dev(0x9bf6, Cml, Gt2),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        for (i, a) in DEVICES.iter().enumerate() {
            assert!(DEVICES[i + 1..].iter().all(|b| b.id != a.id), "{:#x} twice", a.id);
        }
    }

    #[test]
    fn known_parts() {
        let cfl = Device::from_id(0x3e92).unwrap();
        assert_eq!(cfl.platform, Platform::CoffeeLake);
        assert_eq!(cfl.platform.gen(), Gen::Gen9);
        assert!(!cfl.has_engine(Engine::Vcs2));
        let bdw_gt3 = Device::from_id(0x1626).unwrap();
        assert_eq!(bdw_gt3.platform.gen(), Gen::Gen8);
        assert!(bdw_gt3.has_engine(Engine::Vcs2));
        assert_eq!(Device::from_id(0x1234), Err(PlatformError::UnknownDevice(0x1234)));
    }

    #[test]
    fn every_platform_has_its_default_device() {
        for p in Platform::ALL {
            let d = p.default_device();
            assert_eq!(d.platform, p);
            assert_eq!(d.gt, GtLevel::Gt2);
            assert_eq!(p.short_name().parse::<Platform>().unwrap(), p);
        }
    }
}
