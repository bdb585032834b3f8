//! The PVINFO page (`struct vgt_if` in i915): the 4 KiB block at BAR0 offset 0x78000 through which
//! a GVT-aware guest driver learns it runs on a vGPU, which graphics-memory windows it owns, and
//! through which it notifies page-table creation and destruction.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// BAR0 offset of the page.
pub const PVINFO_BASE: u32 = 0x7_8000;
/// Size of the page.
pub const PVINFO_SIZE: u32 = 0x1000;
/// "vGTvGTvG" read as a little-endian u64.
pub const VGT_MAGIC: u64 = 0x4776_5447_7654_4776;
/// Interface version the device implements (guests require major >= 1).
pub const VGT_VERSION_MAJOR: u16 = 1;

bitflags::bitflags! {
    /// `vgt_caps`: what the vGPU offers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct VgtCaps: u32 {
        /// Full 48-bit PPGTT per context (guest i915 refuses to load without it).
        const FULL_PPGTT = 1 << 2;
        /// CSB entries are mirrored into the guest's status page (required by the guest too).
        const HWSP_EMULATION = 1 << 3;
        /// 64 KiB / 2 MiB GTT pages.
        const HUGE_GTT = 1 << 4;
    }
}

/// `g2v_notify` values: what the guest tells the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum G2vNotify {
    /// A 3-level PPGTT was created (roots in `pdp[0..4]`).
    Ppgtt3Create = 2,
    /// A 3-level PPGTT is destroyed.
    Ppgtt3Destroy = 3,
    /// A 4-level PPGTT was created (PML4 in `pdp[0]`).
    Ppgtt4Create = 4,
    /// A 4-level PPGTT is destroyed.
    Ppgtt4Destroy = 5,
    /// An execlist context was created (informational).
    ExeclistContextCreate = 6,
    /// An execlist context is destroyed (informational).
    ExeclistContextDestroy = 7,
}

impl G2vNotify {
    /// Decodes a written value.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            2 => G2vNotify::Ppgtt3Create,
            3 => G2vNotify::Ppgtt3Destroy,
            4 => G2vNotify::Ppgtt4Create,
            5 => G2vNotify::Ppgtt4Destroy,
            6 => G2vNotify::ExeclistContextCreate,
            7 => G2vNotify::ExeclistContextDestroy,
            _ => return None,
        })
    }
}

/// A base/size pair of one graphics-memory window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GmadrRange {
    /// GGTT address of the window.
    pub base: u32,
    /// Its size in bytes.
    pub size: u32,
}

/// A PDP register pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PdpPair {
    /// Low dword.
    pub lo: u32,
    /// High dword.
    pub hi: u32,
}

/// `struct vgt_if`, field for field (offsets relative to [`PVINFO_BASE`]).
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VgtIf {
    /// 0x00: [`VGT_MAGIC`].
    pub magic: u64,
    /// 0x08.
    pub version_major: u16,
    /// 0x0a.
    pub version_minor: u16,
    /// 0x0c: the vGPU's id.
    pub vgt_id: u32,
    /// 0x10: [`VgtCaps`].
    pub vgt_caps: u32,
    /// 0x14..0x40.
    pub rsv1: [u32; 11],
    /// 0x40: the aperture (CPU-mappable) window.
    pub mappable_gmadr: GmadrRange,
    /// 0x48: the hidden window.
    pub nonmappable_gmadr: GmadrRange,
    /// 0x50: fence registers owned.
    pub fence_num: u32,
    /// 0x54..0x800.
    pub rsv2: [u32; 0x1eb],
    /// 0x800.
    pub rsv4: u32,
    /// 0x804: the guest finished its mode set.
    pub display_ready: u32,
    /// 0x808..0x818: a guest writing here breaks the contract (insufficient resources).
    pub rsv5: [u32; 4],
    /// 0x818: [`G2vNotify`].
    pub g2v_notify: u32,
    /// 0x81c..0x830.
    pub rsv6: [u32; 5],
    /// 0x830: cursor hot spot x.
    pub cursor_x_hot: u32,
    /// 0x834: cursor hot spot y.
    pub cursor_y_hot: u32,
    /// 0x838: page-table roots for the g2v notifications.
    pub pdp: [PdpPair; 4],
    /// 0x858: an execlist context descriptor (informational).
    pub execlist_context_descriptor_lo: u32,
    /// 0x85c.
    pub execlist_context_descriptor_hi: u32,
    /// 0x860..0x1000.
    pub rsv7: [u32; 0x1e8],
}

const _: () = assert!(std::mem::size_of::<VgtIf>() == PVINFO_SIZE as usize);

/// Field offsets relative to [`PVINFO_BASE`].
pub mod off {
    /// magic (8 bytes).
    pub const MAGIC: u32 = 0x00;
    /// version_major / version_minor.
    pub const VERSION: u32 = 0x08;
    /// vgt_id.
    pub const VGT_ID: u32 = 0x0c;
    /// vgt_caps.
    pub const CAPS: u32 = 0x10;
    /// mappable_gmadr.base.
    pub const AVAIL_RS: u32 = 0x40;
    /// fence_num.
    pub const FENCE_NUM: u32 = 0x50;
    /// display_ready.
    pub const DISPLAY_READY: u32 = 0x804;
    /// rsv5, first dword.
    pub const RSV5: u32 = 0x808;
    /// g2v_notify.
    pub const G2V_NOTIFY: u32 = 0x818;
    /// cursor_x_hot.
    pub const CURSOR_X_HOT: u32 = 0x830;
    /// `pdp[0].lo`.
    pub const PDP: u32 = 0x838;
    /// execlist_context_descriptor_lo.
    pub const EXECLIST_DESC: u32 = 0x858;
    /// First byte after the execlist descriptor.
    pub const END_OF_FIELDS: u32 = 0x860;
}

impl VgtIf {
    /// The page a vGPU presents: magic, version 1.0, its id, full PPGTT + HWSP emulation +
    /// huge GTT, its windows and fence count; cursor hot spots unset.
    pub fn new(vgt_id: u32, mappable: GmadrRange, nonmappable: GmadrRange, fences: u32) -> Self {
        let mut p = VgtIf::new_zeroed();
        p.magic = VGT_MAGIC;
        p.version_major = VGT_VERSION_MAJOR;
        p.vgt_id = vgt_id;
        p.vgt_caps = (VgtCaps::FULL_PPGTT | VgtCaps::HWSP_EMULATION | VgtCaps::HUGE_GTT).bits();
        p.mappable_gmadr = mappable;
        p.nonmappable_gmadr = nonmappable;
        p.fence_num = fences;
        p.cursor_x_hot = u32::MAX;
        p.cursor_y_hot = u32::MAX;
        p
    }

    /// The dword at `off` (relative, 4-byte aligned), or `None` outside the page.
    pub fn dword(&self, off: u32) -> Option<u32> {
        let i = usize::try_from(off).ok()?;
        let b = self.as_bytes().get(i..i.checked_add(4)?)?;
        u32::read_from_bytes(b).ok()
    }

    /// Sets the dword at `off`; false outside the page.
    pub fn set_dword(&mut self, off: u32, value: u32) -> bool {
        let Some(i) = usize::try_from(off).ok() else { return false };
        let Some(end) = i.checked_add(4) else { return false };
        match self.as_mut_bytes().get_mut(i..end) {
            Some(b) => {
                b.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }

    /// The 64-bit root in `pdp[i]`.
    pub fn root(&self, i: usize) -> Option<u64> {
        self.pdp.get(i).map(|p| u64::from(p.hi) << 32 | u64::from(p.lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_match_the_abi() {
        let p = VgtIf::new(3, GmadrRange { base: 0x800_0000, size: 0x400_0000 }, GmadrRange::default(), 4);
        assert_eq!(p.dword(off::MAGIC), Some(0x7654_4776));
        assert_eq!(p.dword(off::MAGIC + 4), Some(0x4776_5447));
        assert_eq!(p.dword(off::VERSION), Some(1));
        assert_eq!(p.dword(off::VGT_ID), Some(3));
        assert_eq!(p.dword(off::CAPS), Some(0x1c));
        assert_eq!(p.dword(off::AVAIL_RS), Some(0x800_0000));
        assert_eq!(p.dword(off::AVAIL_RS + 4), Some(0x400_0000));
        assert_eq!(p.dword(off::FENCE_NUM), Some(4));
        assert_eq!(p.dword(off::CURSOR_X_HOT), Some(u32::MAX));
        assert_eq!(p.dword(PVINFO_SIZE), None);
        let mut p = p;
        assert!(p.set_dword(off::PDP + 8, 0x1234_5000));
        assert!(p.set_dword(off::PDP + 12, 0x1));
        assert_eq!(p.root(1), Some(0x1_1234_5000));
        assert!(!p.set_dword(PVINFO_SIZE - 2, 0));
        assert_eq!(G2vNotify::from_raw(4), Some(G2vNotify::Ppgtt4Create));
        assert_eq!(G2vNotify::from_raw(1), None);
    }
}
