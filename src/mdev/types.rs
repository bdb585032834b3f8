//! vGPU types: how much graphics memory, how many fences, what scheduling weight and what largest
//! display resolution each kind of vGPU gets. The four GVT-g types (`GVTg_V4_*` on Broadwell,
//! `GVTg_V5_*` on Gen9) plus custom ones.

use std::fmt;

use crate::hw::Gen;

const MIB: u64 = 1 << 20;

/// Why a custom type is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VgpuTypeError {
    /// A size that is zero or not a multiple of 4 KiB... or too large.
    #[error("type {name}: {why}")]
    Invalid {
        /// Type name.
        name: String,
        /// Why.
        why: &'static str,
    },
}

/// One kind of vGPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuType {
    /// Name (`GVTg_V5_4`, or a custom one).
    pub name: String,
    /// Aperture (CPU-mappable) graphics memory, bytes.
    pub aperture: u64,
    /// Hidden graphics memory, bytes.
    pub hidden: u64,
    /// Fence registers.
    pub fences: u32,
    /// Scheduling weight, 1..=16.
    pub weight: u8,
    /// Largest display resolution (width, height).
    pub max_resolution: (u32, u32),
}

impl fmt::Display for VgpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: aperture {} MiB, hidden {} MiB, {} fences, weight {}, up to {}x{}",
            self.name,
            self.aperture / MIB,
            self.hidden / MIB,
            self.fences,
            self.weight,
            self.max_resolution.0,
            self.max_resolution.1
        )
    }
}

impl VgpuType {
    /// The GVT-g types of `gen`, smallest first: `_8` (64 MiB aperture, 384 MiB hidden, weight 2,
    /// 1024x768), `_4` (128/512, weight 4), `_2` (256/1024, weight 8), `_1` (512/2048, weight 16);
    /// four fences each, 1920x1200 from `_4` up.
    pub fn gvt(gen: Gen) -> Vec<VgpuType> {
        let v = match gen {
            Gen::Gen8 => 4,
            Gen::Gen9 => 5,
        };
        [
            (8, 64, 384, 2, (1024, 768)),
            (4, 128, 512, 4, (1920, 1200)),
            (2, 256, 1024, 8, (1920, 1200)),
            (1, 512, 2048, 16, (1920, 1200)),
        ]
        .into_iter()
        .map(|(n, ap, hid, weight, res)| VgpuType {
            name: format!("GVTg_V{v}_{n}"),
            aperture: ap * MIB,
            hidden: hid * MIB,
            fences: 4,
            weight,
            max_resolution: res,
        })
        .collect()
    }

    /// A custom type; sizes are whole MiB, weight 1..=16, up to 32 fences.
    pub fn custom(name: &str, aperture: u64, hidden: u64, fences: u32, weight: u8) -> Result<Self, VgpuTypeError> {
        let bad = |why| Err(VgpuTypeError::Invalid { name: name.to_owned(), why });
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return bad("names are non-empty ASCII letters, digits, '_' and '-'");
        }
        if aperture == 0 || aperture % MIB != 0 || hidden % MIB != 0 {
            return bad("aperture must be a non-zero whole number of MiB, hidden a whole number of MiB");
        }
        if aperture > u64::from(u32::MAX) || hidden > u64::from(u32::MAX) {
            return bad("windows are at most 4 GiB");
        }
        if fences > 32 {
            return bad("at most 32 fences");
        }
        if !(1..=16).contains(&weight) {
            return bad("weight is 1..=16");
        }
        Ok(VgpuType { name: name.to_owned(), aperture, hidden, fences, weight, max_resolution: (1920, 1200) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvt_types_match_gvt_g() {
        let t = VgpuType::gvt(Gen::Gen9);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].to_string(), "GVTg_V5_8: aperture 64 MiB, hidden 384 MiB, 4 fences, weight 2, up to 1024x768");
        assert_eq!(t[3].name, "GVTg_V5_1");
        assert_eq!((t[3].aperture, t[3].hidden, t[3].weight), (512 * MIB, 2048 * MIB, 16));
        assert_eq!(VgpuType::gvt(Gen::Gen8)[1].name, "GVTg_V4_4");
    }

    #[test]
    fn custom_types_are_checked() {
        assert!(VgpuType::custom("hmi", 32 * MIB, 128 * MIB, 2, 6).is_ok());
        assert!(VgpuType::custom("", MIB, 0, 0, 1).is_err());
        assert!(VgpuType::custom("a b", MIB, 0, 0, 1).is_err());
        assert!(VgpuType::custom("x", 0, MIB, 0, 1).is_err());
        assert!(VgpuType::custom("x", MIB + 1, 0, 0, 1).is_err());
        assert!(VgpuType::custom("x", MIB, 0, 33, 1).is_err());
        let e = VgpuType::custom("x", MIB, 0, 0, 17).unwrap_err();
        assert_eq!(e.to_string(), "type x: weight is 1..=16");
    }
}
