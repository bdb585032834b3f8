//! vfio-user messages as they travel on the socket: a 16-byte header, then a command-specific
//! body (the protocol's C layouts, little-endian on the hosts this runs on).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The message header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    /// Matches a reply to its command.
    pub message_id: u16,
    /// The command ([`cmd`]).
    pub command: u16,
    /// Bytes of the whole message, header included.
    pub message_size: u32,
    /// Type and flags ([`flags`]).
    pub flags: u32,
    /// errno of a failed command, in its reply.
    pub error: u32,
}

/// Bytes of [`Header`].
pub const HEADER_SIZE: usize = 16;
const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);

/// Commands.
pub mod cmd {
    /// Version and capability negotiation.
    pub const VERSION: u16 = 1;
    /// Map guest memory (with a file descriptor, or without).
    pub const DMA_MAP: u16 = 2;
    /// Unmap guest memory.
    pub const DMA_UNMAP: u16 = 3;
    /// Device information.
    pub const DEVICE_GET_INFO: u16 = 4;
    /// One region's information.
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    /// One interrupt index's information.
    pub const GET_IRQ_INFO: u16 = 7;
    /// Wire interrupts to eventfds, mask, unmask or trigger them.
    pub const SET_IRQS: u16 = 8;
    /// Read a region.
    pub const REGION_READ: u16 = 9;
    /// Write a region.
    pub const REGION_WRITE: u16 = 10;
    /// Reset the device.
    pub const DEVICE_RESET: u16 = 13;
}

/// Header flags.
pub mod flags {
    /// The message type field.
    pub const TYPE_MASK: u32 = 0xf;
    /// A reply.
    pub const REPLY: u32 = 1;
    /// The sender wants no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The command failed (`error` holds the errno).
    pub const ERROR: u32 = 1 << 5;
}

/// VERSION's body; a NUL-terminated JSON capability string follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

/// DMA_MAP's body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DmaMap {
    /// Size of this body.
    pub argsz: u32,
    /// Read/write permissions.
    pub flags: u32,
    /// Offset of the map in the file passed with the message.
    pub offset: u64,
    /// Guest (DMA) address.
    pub address: u64,
    /// Bytes.
    pub size: u64,
}

/// DMA_UNMAP's body (echoed in the reply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DmaUnmap {
    /// Size of this body.
    pub argsz: u32,
    /// Flags (dirty-page bitmap, unmap all).
    pub flags: u32,
    /// Guest (DMA) address.
    pub address: u64,
    /// Bytes.
    pub size: u64,
}

/// DEVICE_GET_INFO's body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DeviceInfo {
    /// Size of this body.
    pub argsz: u32,
    /// VFIO device flags.
    pub flags: u32,
    /// Regions.
    pub num_regions: u32,
    /// Interrupt indexes.
    pub num_irqs: u32,
}

/// VFIO device flag: a PCI device.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// VFIO device flag: it can be reset.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;

/// DEVICE_GET_REGION_INFO's body (`struct vfio_region_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegionInfo {
    /// Size of this body (with capabilities).
    pub argsz: u32,
    /// VFIO region flags.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability.
    pub cap_offset: u32,
    /// Bytes.
    pub size: u64,
    /// Offset of the region in the device file (for mmap).
    pub offset: u64,
}

/// GET_IRQ_INFO's body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IrqInfo {
    /// Size of this body.
    pub argsz: u32,
    /// VFIO interrupt flags.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// Vectors.
    pub count: u32,
}

/// SET_IRQS's body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetIrqs {
    /// Size of this body.
    pub argsz: u32,
    /// Data type and action.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Vectors.
    pub count: u32,
}

/// SET_IRQS: no data (trigger, mask or unmask).
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// SET_IRQS: boolean data (not supported).
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// SET_IRQS: eventfds, one per vector, passed with the message.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// SET_IRQS: mask.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// SET_IRQS: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// SET_IRQS: trigger.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// REGION_READ / REGION_WRITE's body; a write's data follows (and a read reply's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes.
    pub count: u32,
}

/// Reads a `T` from the front of `body`, if it is long enough.
pub fn parse<T: FromBytes + KnownLayout + Immutable>(body: &[u8]) -> Option<T> {
    T::read_from_prefix(body).ok().map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_are_the_protocols() {
        assert_eq!(size_of::<Version>(), 4);
        assert_eq!(size_of::<DmaMap>(), 32);
        assert_eq!(size_of::<DmaUnmap>(), 24);
        assert_eq!(size_of::<DeviceInfo>(), 16);
        assert_eq!(size_of::<RegionInfo>(), 32);
        assert_eq!(size_of::<IrqInfo>(), 16);
        assert_eq!(size_of::<SetIrqs>(), 20);
        assert_eq!(size_of::<RegionAccess>(), 16);
        let h = Header { message_id: 0x0102, command: 9, message_size: 32, flags: 1, error: 0 };
        assert_eq!(h.as_bytes(), &[2, 1, 9, 0, 32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse::<RegionAccess>(&[0; 15]), None);
    }
}
