//! Encoders for the commands guest drivers emit, as [`CmdBuf`] methods. Used by the reference guest
//! driver, tests, benchmarks and fuzz seeds; each produces the Gen8+ layout the scanner decodes.

use super::memory::AddrSpace;

/// Post-sync operation of PIPE_CONTROL / MI_FLUSH_DW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostSync {
    /// No write.
    None,
    /// Write the immediate data.
    WriteImmediate,
    /// Write the PS_DEPTH_COUNT register (PIPE_CONTROL) or nothing (MI_FLUSH_DW reserved).
    WriteDepthCount,
    /// Write the TIMESTAMP register.
    WriteTimestamp,
}

impl PostSync {
    const fn bits(self) -> u32 {
        match self {
            PostSync::None => 0,
            PostSync::WriteImmediate => 1,
            PostSync::WriteDepthCount => 2,
            PostSync::WriteTimestamp => 3,
        }
    }
}

/// A growing command buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdBuf {
    /// The encoded dwords.
    pub dwords: Vec<u32>,
}

fn lo(a: u64) -> u32 {
    a as u32
}

fn hi(a: u64) -> u32 {
    (a >> 32) as u32
}

fn ggtt_bit(space: AddrSpace, bit: u32) -> u32 {
    if space == AddrSpace::Ggtt {
        1 << bit
    } else {
        0
    }
}

impl CmdBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.dwords.len() as u64 * 4
    }

    /// Appends raw dwords.
    pub fn raw(&mut self, dwords: &[u32]) -> &mut Self {
        self.dwords.extend_from_slice(dwords);
        self
    }

    /// The bytes, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.dwords.iter().flat_map(|d| d.to_le_bytes()).collect()
    }

    /// MI_NOOP × `n`.
    pub fn noop(&mut self, n: usize) -> &mut Self {
        self.dwords.resize(self.dwords.len() + n, 0);
        self
    }

    /// Pads with MI_NOOP to a multiple of 8 bytes (a valid ring tail).
    pub fn align_qword(&mut self) -> &mut Self {
        if self.dwords.len() % 2 == 1 {
            self.noop(1);
        }
        self
    }

    /// MI_USER_INTERRUPT.
    pub fn user_interrupt(&mut self) -> &mut Self {
        self.raw(&[0x0100_0000])
    }

    /// MI_BATCH_BUFFER_END.
    pub fn bb_end(&mut self) -> &mut Self {
        self.raw(&[0x0500_0000])
    }

    /// MI_BATCH_BUFFER_START of `addr` in `space`; `second_level` for a call that returns.
    pub fn bb_start(&mut self, space: AddrSpace, addr: u64, second_level: bool) -> &mut Self {
        let ppgtt = if space == AddrSpace::Ppgtt { 1 << 8 } else { 0 };
        let second = if second_level { 1 << 22 } else { 0 };
        self.raw(&[0x1880_0001 | ppgtt | second, lo(addr) & !3, hi(addr)])
    }

    /// MI_STORE_DATA_IMM of one dword.
    pub fn store_dword(&mut self, space: AddrSpace, addr: u64, value: u32) -> &mut Self {
        self.raw(&[0x1000_0002 | ggtt_bit(space, 22), lo(addr) & !3, hi(addr), value])
    }

    /// MI_STORE_DATA_IMM of one qword.
    pub fn store_qword(&mut self, space: AddrSpace, addr: u64, value: u64) -> &mut Self {
        self.raw(&[0x1020_0003 | ggtt_bit(space, 22), lo(addr) & !3, hi(addr), lo(value), hi(value)])
    }

    /// MI_LOAD_REGISTER_IMM of `(register, value)` pairs.
    pub fn lri(&mut self, pairs: &[(u32, u32)]) -> &mut Self {
        let n = pairs.len() as u32;
        self.dwords.push(0x1100_0000 | (2 * n - 1));
        for &(r, v) in pairs {
            self.dwords.extend_from_slice(&[r, v]);
        }
        self
    }

    /// MI_STORE_REGISTER_MEM.
    pub fn srm(&mut self, reg: u32, space: AddrSpace, addr: u64) -> &mut Self {
        self.raw(&[0x1200_0002 | ggtt_bit(space, 22), reg, lo(addr) & !3, hi(addr)])
    }

    /// MI_LOAD_REGISTER_MEM.
    pub fn lrm(&mut self, reg: u32, space: AddrSpace, addr: u64) -> &mut Self {
        self.raw(&[0x1480_0002 | ggtt_bit(space, 22), reg, lo(addr) & !3, hi(addr)])
    }

    /// MI_LOAD_REGISTER_REG.
    pub fn lrr(&mut self, src: u32, dst: u32) -> &mut Self {
        self.raw(&[0x1500_0001, src, dst])
    }

    /// PIPE_CONTROL with a post-sync write and optional notify; `flags` are extra dword-1 bits.
    pub fn pipe_control(
        &mut self,
        flags: u32,
        post: PostSync,
        space: AddrSpace,
        addr: u64,
        imm: u64,
        notify: bool,
    ) -> &mut Self {
        let dw1 = flags | post.bits() << 14 | ggtt_bit(space, 24) | if notify { 1 << 8 } else { 0 };
        self.raw(&[0x7a00_0004, dw1, lo(addr) & !3, hi(addr), lo(imm), hi(imm)])
    }

    /// MI_FLUSH_DW, 4 dwords (dword write) or 5 (qword write) with `qword`.
    pub fn flush_dw(
        &mut self,
        post: PostSync,
        space: AddrSpace,
        addr: u64,
        imm: u64,
        qword: bool,
        notify: bool,
    ) -> &mut Self {
        let len = if qword { 3 } else { 2 };
        let dw0 = 0x1300_0000 | len | post.bits() << 14 | if notify { 1 << 8 } else { 0 };
        let ggtt = if space == AddrSpace::Ggtt { 1 << 2 } else { 0 };
        self.raw(&[dw0, (lo(addr) & !7) | ggtt, hi(addr), lo(imm)]);
        if qword {
            self.raw(&[hi(imm)]);
        }
        self
    }

    /// MI_ATOMIC without inline data; `op` is the ATOMIC OPCODE field, `size_log2` 0 (dword) or 1 (qword).
    pub fn atomic(&mut self, op: u8, size_log2: u32, space: AddrSpace, addr: u64) -> &mut Self {
        self.raw(&[0x1780_0001 | ggtt_bit(space, 22) | size_log2 << 19 | u32::from(op) << 8, lo(addr) & !3, hi(addr)])
    }

    /// MI_SEMAPHORE_WAIT polling `addr` until `*addr >= value` (compare operation SAD_GREATER_THAN_OR_EQUAL_SDD).
    pub fn semaphore_wait(&mut self, space: AddrSpace, addr: u64, value: u32) -> &mut Self {
        self.raw(&[0x0e00_8002 | ggtt_bit(space, 22) | 1 << 12, value, lo(addr) & !3, hi(addr)])
    }

    /// MI_COPY_MEM_MEM of one dword.
    pub fn copy_mem_mem(&mut self, dst_space: AddrSpace, dst: u64, src_space: AddrSpace, src: u64) -> &mut Self {
        let dw0 = 0x1700_0003 | ggtt_bit(dst_space, 21) | ggtt_bit(src_space, 22);
        self.raw(&[dw0, lo(dst) & !3, hi(dst), lo(src) & !3, hi(src)])
    }

    /// MI_MATH with the given ALU instructions.
    pub fn math(&mut self, alu: &[u32]) -> &mut Self {
        self.dwords.push(0x0d00_0000 | (alu.len() as u32).saturating_sub(1));
        self.raw(alu)
    }

    /// XY_SRC_COPY_BLT, 32 bpp, linear, copying a `w`×`h` rectangle.
    #[allow(clippy::too_many_arguments)]
    pub fn xy_src_copy(&mut self, dst: u64, dst_pitch: u16, src: u64, src_pitch: u16, w: u16, h: u16) -> &mut Self {
        let br13 = 3 << 24 | 0xcc << 16 | u32::from(dst_pitch);
        let br = u32::from(h) << 16 | u32::from(w);
        self.raw(&[0x54f0_0008, br13, 0, br, lo(dst), hi(dst), 0, u32::from(src_pitch), lo(src), hi(src)])
    }

    /// XY_COLOR_BLT, 32 bpp, linear.
    pub fn xy_color(&mut self, dst: u64, pitch: u16, w: u16, h: u16, color: u32) -> &mut Self {
        let br13 = 3 << 24 | 0xf0 << 16 | u32::from(pitch);
        self.raw(&[0x5430_0005, br13, 0, u32::from(h) << 16 | u32::from(w), lo(dst), hi(dst), color])
    }

    /// XY_FAST_COPY_BLT, 32 bpp, linear.
    pub fn xy_fast_copy(&mut self, dst: u64, dst_pitch: u16, src: u64, src_pitch: u16, w: u16, h: u16) -> &mut Self {
        let dw1 = 3 << 24 | u32::from(dst_pitch); // colour depth 3: 32 bpp
        let br = u32::from(h) << 16 | u32::from(w);
        self.raw(&[0x5080_0008, dw1, 0, br, lo(dst), hi(dst), 0, u32::from(src_pitch), lo(src), hi(src)])
    }
}
