//! The scanner's error: where in the command stream, which command, and why.

use std::fmt;

use super::memory::AddrSpace;
use super::regs::RegAccess;
use crate::hw::Engine;

/// Which buffer of a workload a location refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    /// The ring buffer (the copy from head to tail).
    Ring,
    /// The engine-context part of a context image (a register-load list restored on switch-in).
    Context,
    /// A batch buffer at nesting `level` (1 or 2), started at `gma` in `space`.
    Batch {
        /// Nesting level: 1 for a batch started from the ring, 2 for a second-level batch.
        level: u8,
        /// Address space of the batch.
        space: AddrSpace,
        /// Graphics address of its first byte.
        gma: u64,
    },
}

impl fmt::Display for BufferKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufferKind::Ring => f.write_str("ring"),
            BufferKind::Context => f.write_str("context image"),
            BufferKind::Batch { level, space, gma } => write!(f, "batch L{level} {space}@{gma:#x}"),
        }
    }
}

/// Where a scan error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The buffer.
    pub buffer: BufferKind,
    /// Byte offset of the command inside the buffer (for the ring: from the head).
    pub offset: u64,
    /// Name of the command, when it was decoded.
    pub command: Option<&'static str>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} +{:#x}", self.buffer, self.offset)?;
        if let Some(c) = self.command {
            write!(f, " {c}")?;
        }
        Ok(())
    }
}

/// Why a command stream was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// No command has this encoding on this engine.
    #[error("unknown command header {dw0:#010x} on {engine}")]
    UnknownCommand {
        /// Dword 0.
        dw0: u32,
        /// Engine scanned.
        engine: Engine,
    },
    /// The command exists but is not valid on this engine.
    #[error("not valid on {0}")]
    WrongEngine(Engine),
    /// The command's length runs past the end of its buffer.
    #[error("{len} dwords run past the end of the buffer ({available} dwords left)")]
    Truncated {
        /// Length of the command in dwords.
        len: u32,
        /// Dwords left in the buffer.
        available: u64,
    },
    /// The command's length is not one the hardware accepts for it.
    #[error("length {len} dwords is invalid: {expected}")]
    BadLength {
        /// Length in dwords.
        len: u32,
        /// What it must be.
        expected: &'static str,
    },
    /// A GGTT access falls outside the vGPU's aperture and hidden windows, or straddles them.
    #[error("{what} at ggtt {addr:#x}+{size:#x} is outside the vGPU's graphics memory")]
    AddressOutsideWindows {
        /// The field.
        what: &'static str,
        /// Graphics address.
        addr: u64,
        /// Bytes accessed.
        size: u64,
    },
    /// A PPGTT address is not in canonical form (bits 63:48 must copy bit 47).
    #[error("ppgtt address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// A register the command stream may not access this way.
    #[error("{access:?} of register {reg:#x} is not allowed from a command stream")]
    RegisterNotAllowed {
        /// MMIO offset.
        reg: u32,
        /// Access attempted.
        access: RegAccess,
    },
    /// An engine context loading a register of the ring context (ring, batch state, roots), which
    /// only the host fills.
    #[error("the engine context may not load ring-context register {0:#x}")]
    RingContextRegister(u32),
    /// A FORCE_TO_NONPRIV write with a value outside the whitelist.
    #[error("FORCE_TO_NONPRIV {reg:#x} may not expose register {value:#x}")]
    NonprivValue {
        /// The slot.
        reg: u32,
        /// The value written.
        value: u32,
    },
    /// A combination of fields the hardware does not define.
    #[error("undefined: {0}")]
    Undefined(&'static str),
    /// A command that is never allowed from a guest.
    #[error("privileged command: {0}")]
    Privileged(&'static str),
    /// Batch nesting the hardware does not allow.
    #[error("batch nesting: {0}")]
    Nesting(&'static str),
    /// A buffer ends without MI_BATCH_BUFFER_END or a chaining MI_BATCH_BUFFER_START.
    #[error("batch buffer runs past {0:#x} bytes without ending")]
    Unterminated(u64),
    /// The workload copies more than the scan budget allows.
    #[error("scan budget exceeded: more than {limit} bytes of commands")]
    Budget {
        /// The budget in bytes.
        limit: u64,
    },
    /// The workload reaches more batch buffers than allowed.
    #[error("more than {0} batch buffers")]
    TooManyBuffers(usize),
    /// A graphics address of a buffer is not mapped.
    #[error("{space} address {gma:#x} is not mapped")]
    Unmapped {
        /// Address space.
        space: AddrSpace,
        /// Graphics address.
        gma: u64,
    },
    /// A mapped page points outside guest memory.
    #[error("guest physical address {0:#x} is not guest memory")]
    BadGuestMemory(u64),
    /// The ring registers are inconsistent.
    #[error("invalid ring: {0}")]
    BadRing(&'static str),
    /// A command with GGTT surfaces whose address layout is unknown.
    #[error("GGTT-addressed surfaces of this command cannot be bounded")]
    UnboundedSurface,
    /// A store-index command with no guest status page to redirect it to.
    #[error("status-page index write {0:#x} without a guest status page, or past its end")]
    HwspIndex(u64),
}

/// A rejected command stream: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct ScanError {
    /// Where.
    pub at: Location,
    /// Why.
    pub reason: Reason,
}
