//! Command streamers (engines) of Gen8/Gen9 and their MMIO bases.

use std::fmt;
use std::str::FromStr;

use bitflags::bitflags;

/// One command streamer of a Gen8/Gen9 GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    /// Render command streamer (3D, GPGPU, media pipeline).
    Rcs,
    /// Blitter command streamer (2D copies and fills).
    Bcs,
    /// First video (VDBox) command streamer.
    Vcs,
    /// Second video command streamer, on GT3/GT4 parts only.
    Vcs2,
    /// Video enhancement (VEBox) command streamer.
    Vecs,
}

impl Engine {
    /// Every engine, in the order used for indexing per-engine arrays.
    pub const ALL: [Engine; 5] = [Engine::Rcs, Engine::Bcs, Engine::Vcs, Engine::Vcs2, Engine::Vecs];

    /// The engine's MMIO base in BAR0 (`RENDER_RING_BASE`, `BLT_RING_BASE`, ...).
    pub const fn mmio_base(self) -> u32 {
        match self {
            Engine::Rcs => 0x0_2000,
            Engine::Bcs => 0x2_2000,
            Engine::Vcs => 0x1_2000,
            Engine::Vcs2 => 0x1_c000,
            Engine::Vecs => 0x1_a000,
        }
    }

    /// Dense index of the engine, `0..5`.
    pub const fn index(self) -> usize {
        match self {
            Engine::Rcs => 0,
            Engine::Bcs => 1,
            Engine::Vcs => 2,
            Engine::Vcs2 => 3,
            Engine::Vecs => 4,
        }
    }

    /// The engine as a single-bit mask.
    pub const fn mask(self) -> EngineMask {
        match self {
            Engine::Rcs => EngineMask::RCS,
            Engine::Bcs => EngineMask::BCS,
            Engine::Vcs => EngineMask::VCS,
            Engine::Vcs2 => EngineMask::VCS2,
            Engine::Vecs => EngineMask::VECS,
        }
    }

    /// The engine's bit in GDRST (bit 0 resets the whole GPU, bit 5 the GuC, bit 7 the second
    /// video engine).
    pub const fn gdrst_bit(self) -> u32 {
        match self {
            Engine::Rcs => 1 << 1,
            Engine::Vcs => 1 << 2,
            Engine::Bcs => 1 << 3,
            Engine::Vecs => 1 << 4,
            Engine::Vcs2 => 1 << 7,
        }
    }

    /// Short lower-case name as used by i915 and on the command line (`rcs`, `bcs`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Engine::Rcs => "rcs",
            Engine::Bcs => "bcs",
            Engine::Vcs => "vcs",
            Engine::Vcs2 => "vcs2",
            Engine::Vecs => "vecs",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown engine `{s}` (expected rcs, bcs, vcs, vcs2 or vecs)"))
    }
}

bitflags! {
    /// A set of engines, e.g. the engines a command is valid on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EngineMask: u8 {
        /// Render.
        const RCS = 1 << 0;
        /// Blitter.
        const BCS = 1 << 1;
        /// Video 1.
        const VCS = 1 << 2;
        /// Video 2.
        const VCS2 = 1 << 3;
        /// Video enhancement.
        const VECS = 1 << 4;
    }
}

impl EngineMask {
    /// Whether `engine` is in the set.
    pub const fn has(self, engine: Engine) -> bool {
        self.contains(engine.mask())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_distinct_and_4k_aligned() {
        for (i, a) in Engine::ALL.iter().enumerate() {
            assert_eq!(a.mmio_base() & 0xfff, 0);
            assert_eq!(a.index(), i);
            for b in &Engine::ALL[i + 1..] {
                assert_ne!(a.mmio_base(), b.mmio_base());
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for e in Engine::ALL {
            assert_eq!(e.name().parse::<Engine>().unwrap(), e);
            assert!(e.mask().has(e));
        }
        assert!("rcs0".parse::<Engine>().is_err());
    }
}
