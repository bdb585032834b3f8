//! The virtual OpRegion: the 8 KiB ACPI IGD OpRegion a graphics driver finds at the guest
//! physical address in config register ASLS, with a Video BIOS Table (VBT) in mailbox 4.
//!
//! The VMM places the bytes of [`OpRegion::bytes`] in guest memory and writes ASLS. The VBT
//! describes no display outputs (display emulation is a later capability); it is enough for a
//! driver to accept the OpRegion and its VBT. SWSCI requests are answered as GVT-g does: the
//! capability queries succeed with nothing supported, every other function fails.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Size of the OpRegion.
pub const OPREGION_SIZE: usize = 8 << 10;
/// Offset of the VBT (mailbox 4).
pub const VBT_OFFSET: usize = 0x400;
/// Offset of the SWSCI mailbox (mailbox 2): SCIC, then PARM.
pub const SWSCI_OFFSET: u64 = 0x200;

const SIGNATURE: &[u8; 16] = b"IntelGraphicsMem";
/// Header: mailboxes field (bit 0 ACPI, bit 1 SWSCI, bit 3 VBT).
const MBOXES_OFFSET: usize = 0x58;
/// ACPI mailbox: current lid state (1 = open).
const CLID_OFFSET: usize = 0x1ac;

/// The OpRegion contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRegion(Vec<u8>);

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at + v.len()) {
        d.copy_from_slice(v);
    }
}

impl OpRegion {
    /// An OpRegion for a vGPU of `platform_name` (used in the VBT signature).
    pub fn new(platform_name: &str) -> Self {
        let mut b = vec![0u8; OPREGION_SIZE];
        put(&mut b, 0, SIGNATURE);
        put(&mut b, 0x10, &((OPREGION_SIZE / 1024) as u32).to_le_bytes());
        put(&mut b, 0x14, &0x0200_0000u32.to_le_bytes()); // OpRegion version 2.0
        put(&mut b, MBOXES_OFFSET, &(1u32 | 1 << 1 | 1 << 3).to_le_bytes());
        put(&mut b, CLID_OFFSET, &[1]);
        let vbt = vbt(platform_name);
        put(&mut b, VBT_OFFSET, &vbt);
        OpRegion(b)
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Serves a SWSCI request the guest left in the OpRegion at `asls` in guest memory: function
    /// in SCIC bits 4:1, subfunction in bits 15:8. Returns false if the OpRegion is not in guest
    /// memory (nothing is written then).
    pub fn serve_swsci<M: GuestMemory>(mem: &M, asls: u64) -> bool {
        let Some(scic_at) = asls.checked_add(SWSCI_OFFSET) else { return false };
        let Ok(scic) = mem.read_obj::<u32>(GuestAddress(scic_at)) else { return false };
        let func = (scic >> 1) & 0xf;
        let sub = (scic >> 8) & 0xff;
        // GBDA (4) "supported calls" / "requested callbacks", SBCB (6) "supported calls".
        let supported = matches!((func, sub), (4, 0) | (4, 1) | (6, 0));
        let (scic, parm) = if supported { (0, Some(0)) } else { (scic & !(7 << 5) & !1, None) };
        let ok = mem.write_obj(scic, GuestAddress(scic_at)).is_ok();
        match parm {
            Some(p) => ok && mem.write_obj::<u32>(p, GuestAddress(scic_at + 4)).is_ok(),
            None => ok,
        }
    }
}

/// A VBT: header, BDB header, general features and general definitions (no child devices) and
/// driver features blocks.
fn vbt(platform_name: &str) -> Vec<u8> {
    const VBT_HEADER: usize = 0x30;
    const BDB_HEADER: usize = 22;
    let mut blocks = Vec::new();
    let mut block = |id: u8, data: &[u8]| {
        blocks.push(id);
        blocks.extend_from_slice(&(data.len() as u16).to_le_bytes());
        blocks.extend_from_slice(data);
    };
    block(1, &[0; 10]); // general features: no CRT, no TV, no integrated panel
    block(2, &[0, 0, 0, 0, 33]); // general definitions: child device size 33, none listed
    block(12, &[0; 8]); // driver features: no LVDS
    let bdb_size = BDB_HEADER + blocks.len();
    let size = VBT_HEADER + bdb_size;
    let mut v = vec![0u8; size];
    let mut sig = *b"$VBT                ";
    for (d, s) in sig.iter_mut().skip(5).zip(platform_name.to_ascii_uppercase().bytes()) {
        *d = s;
    }
    put(&mut v, 0, &sig);
    put(&mut v, 20, &100u16.to_le_bytes()); // VBT version
    put(&mut v, 22, &(VBT_HEADER as u16).to_le_bytes());
    put(&mut v, 24, &(size as u16).to_le_bytes());
    put(&mut v, 28, &(VBT_HEADER as u32).to_le_bytes()); // BDB offset
    put(&mut v, VBT_HEADER, b"BIOS_DATA_BLOCK ");
    put(&mut v, VBT_HEADER + 16, &186u16.to_le_bytes()); // BDB version
    put(&mut v, VBT_HEADER + 18, &(BDB_HEADER as u16).to_le_bytes());
    put(&mut v, VBT_HEADER + 20, &(bdb_size as u16).to_le_bytes());
    put(&mut v, VBT_HEADER + BDB_HEADER, &blocks);
    let sum = v.iter().fold(0u8, |a, &x| a.wrapping_add(x));
    put(&mut v, 26, &[0u8.wrapping_sub(sum)]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn header_and_vbt_are_what_i915_validates() {
        let o = OpRegion::new("skl");
        let b = o.bytes();
        assert_eq!(b.len(), 8192);
        assert_eq!(&b[..16], SIGNATURE);
        assert_eq!(b[0x17], 2, "major version 2");
        let vbt = &b[VBT_OFFSET..];
        assert_eq!(&vbt[..12], b"$VBT SKL    ");
        let vbt_size = usize::from(u16_at(vbt, 24));
        assert!(VBT_OFFSET + vbt_size <= OPREGION_SIZE);
        let bdb = u32::from_le_bytes([vbt[28], vbt[29], vbt[30], vbt[31]]) as usize;
        assert_eq!(&vbt[bdb..bdb + 16], b"BIOS_DATA_BLOCK ");
        assert!(bdb + usize::from(u16_at(vbt, bdb + 20)) <= vbt_size);
        assert_eq!(vbt[..vbt_size].iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0, "checksum");
        // Block 2 (general definitions) lists no child devices.
        let first = bdb + 22;
        assert_eq!((vbt[first], u16_at(vbt, first + 1)), (1, 10));
        let second = first + 3 + 10;
        assert_eq!((vbt[second], u16_at(vbt, second + 1), vbt[second + 7]), (2, 5, 33));
    }

    #[test]
    fn swsci_capability_queries_succeed_others_fail() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let asls = 0x4000u64;
        let scic = asls + SWSCI_OFFSET;
        mem.write_obj::<u32>(1 | 4 << 1 | 1 << 8, GuestAddress(scic)).unwrap(); // GBDA, requested callbacks
        mem.write_obj::<u32>(0xffff, GuestAddress(scic + 4)).unwrap();
        assert!(OpRegion::serve_swsci(&mem, asls));
        assert_eq!(mem.read_obj::<u32>(GuestAddress(scic)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(scic + 4)).unwrap(), 0);
        mem.write_obj::<u32>(1 | 5 << 1 | 7 << 5, GuestAddress(scic)).unwrap(); // SBCB? no: function 5
        assert!(OpRegion::serve_swsci(&mem, asls));
        assert_eq!(mem.read_obj::<u32>(GuestAddress(scic)).unwrap(), 5 << 1, "exit status cleared: failure");
        assert!(!OpRegion::serve_swsci(&mem, 0xffff_f000), "outside guest memory");
    }
}
