//! A small guest-memory image with a flat graphics address layout, for tools and tests: buffers
//! placed at GGTT or PPGTT addresses, each backed by its own pages of guest memory, with a
//! [`LinearTranslation`] that maps exactly those pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::memory::{AddrSpace, GmRange, LinearTranslation, PAGE_SIZE};

/// Errors building a [`GmImage`].
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Two placements overlap in the same address space.
    #[error("{space} range {a:#x}..{b:#x} overlaps another buffer")]
    Overlap {
        /// Address space.
        space: AddrSpace,
        /// Start of the new range.
        a: u64,
        /// Its end.
        b: u64,
    },
    /// A placement does not fit the address space.
    #[error("{space} placement at {gma:#x} of {len} bytes does not fit")]
    OutOfRange {
        /// Address space.
        space: AddrSpace,
        /// Address.
        gma: u64,
        /// Length.
        len: usize,
    },
    /// The image is larger than this tool allows.
    #[error("image of {0} bytes is too large")]
    TooLarge(u64),
    /// Guest memory could not be created or written.
    #[error("guest memory: {0}")]
    Memory(String),
}

/// Most guest memory an image may use.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// Collects placements, then builds the image.
#[derive(Clone, Debug, Default)]
pub struct GmImageBuilder {
    pieces: Vec<(AddrSpace, u64, Vec<u8>)>,
    reserve: Vec<(AddrSpace, GmRange)>,
}

impl GmImageBuilder {
    /// Places `bytes` at graphics address `gma` of `space`.
    pub fn place(&mut self, space: AddrSpace, gma: u64, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.pieces.push((space, gma, bytes.into()));
        self
    }

    /// Places dwords (little-endian) at `gma`.
    pub fn place_dwords(&mut self, space: AddrSpace, gma: u64, dwords: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = dwords.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.place(space, gma, bytes)
    }

    /// Backs `range` of `space` with zeroed memory (e.g. a target for stores), without data.
    pub fn back(&mut self, space: AddrSpace, range: GmRange) -> &mut Self {
        self.reserve.push((space, range));
        self
    }

    /// Lays the placements out in guest memory.
    pub fn build(&self) -> Result<GmImage, ImageError> {
        // Page-aligned spans per space, merged where placements share pages.
        let mut spans: Vec<(AddrSpace, u64, u64)> = Vec::new();
        let all = self
            .pieces
            .iter()
            .map(|(s, g, b)| (*s, *g, b.len()))
            .chain(self.reserve.iter().map(|(s, r)| (*s, r.base, r.size as usize)));
        for (space, gma, len) in all {
            let end = gma.checked_add(len.max(1) as u64).filter(|&e| e <= 1 << 48).ok_or(ImageError::OutOfRange {
                space,
                gma,
                len,
            })?;
            let a = gma & !(PAGE_SIZE - 1);
            let b = end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            spans.push((space, a, b));
        }
        spans.sort();
        let mut merged: Vec<(AddrSpace, u64, u64)> = Vec::new();
        for (s, a, b) in spans {
            match merged.last_mut() {
                Some((ls, _, lb)) if *ls == s && a <= *lb => *lb = (*lb).max(b),
                _ => merged.push((s, a, b)),
            }
        }
        let total: u64 = merged.iter().map(|(_, a, b)| b - a).sum();
        if total > MAX_IMAGE_BYTES {
            return Err(ImageError::TooLarge(total));
        }
        // Each span gets the next free guest-physical pages.
        let mut xlate = LinearTranslation::new();
        let mut spans = Vec::with_capacity(merged.len());
        let mut gpa = 0u64;
        for (s, a, b) in merged {
            let range = GmRange::new(a, b - a);
            xlate.map(s, range, GuestAddress(gpa));
            spans.push((s, range, gpa));
            gpa += range.size;
        }
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), total.max(PAGE_SIZE) as usize)])
            .map_err(|e| ImageError::Memory(e.to_string()))?;
        // Overlapping data placements would make the image ambiguous.
        let mut placed: Vec<(AddrSpace, u64, u64)> = Vec::new();
        for (space, gma, bytes) in &self.pieces {
            let (space, gma, len) = (*space, *gma, bytes.len());
            let end = gma + len as u64;
            if placed.iter().any(|&(s, a, b)| s == space && gma < b && a < end) {
                return Err(ImageError::Overlap { space, a: gma, b: end });
            }
            placed.push((space, gma, end));
            let &(_, range, base) = spans
                .iter()
                .find(|(s, r, _)| *s == space && r.contains(gma, len as u64))
                .ok_or(ImageError::OutOfRange { space, gma, len })?;
            mem.write_slice(bytes, GuestAddress(base + (gma - range.base)))
                .map_err(|e| ImageError::Memory(e.to_string()))?;
        }
        Ok(GmImage { mem, xlate })
    }
}

/// Guest memory plus the translation of its graphics addresses.
#[derive(Debug)]
pub struct GmImage {
    /// The guest memory.
    pub mem: GuestMemoryMmap<()>,
    /// GGTT and PPGTT translation onto it.
    pub xlate: LinearTranslation,
}

impl GmImage {
    /// A builder.
    pub fn builder() -> GmImageBuilder {
        GmImageBuilder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::copy_from_gm;

    #[test]
    fn placements_read_back() {
        let img = GmImage::builder()
            .place(AddrSpace::Ggtt, 0x10_0010, vec![1, 2, 3])
            .place(AddrSpace::Ppgtt, 0xffff_ffff_f000, vec![9; 8])
            .place(AddrSpace::Ggtt, 0x10_0100, vec![4])
            .build()
            .unwrap();
        let mut b = [0u8; 3];
        copy_from_gm(&img.mem, &img.xlate, AddrSpace::Ggtt, 0x10_0010, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        copy_from_gm(&img.mem, &img.xlate, AddrSpace::Ppgtt, 0xffff_ffff_f000, &mut b).unwrap();
        assert_eq!(b, [9, 9, 9]);
        copy_from_gm(&img.mem, &img.xlate, AddrSpace::Ggtt, 0x10_0100, &mut b[..1]).unwrap();
        assert_eq!(b[0], 4);
    }

    #[test]
    fn overlaps_are_rejected() {
        let r = GmImage::builder()
            .place(AddrSpace::Ggtt, 0x1000, vec![0; 16])
            .place(AddrSpace::Ggtt, 0x1008, vec![0; 16])
            .build();
        assert!(matches!(r, Err(ImageError::Overlap { .. })));
    }
}
