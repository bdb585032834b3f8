//! The 64-bit execlist context descriptor (Gen8/Gen9).

use crate::cmd::GmWindows;

/// PPGTT addressing mode of a context (descriptor bits 4:3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressingMode {
    /// 0: advanced (SVM), not used by guests.
    Advanced,
    /// 1: legacy 32-bit, a 3-level PPGTT with four PDPs.
    Legacy32,
    /// 2: advanced with A/D bits, not used by guests.
    AdvancedAd,
    /// 3: legacy 64-bit, a 4-level PPGTT (PML4 in PDP0).
    Legacy64,
}

/// Why a descriptor is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// Bit 8 clear: the context is not privileged (i915 always sets it; GVT-g refuses such).
    #[error("not privileged")]
    NotPrivileged,
    /// Advanced addressing modes are not supported.
    #[error("addressing mode {0:?} is not supported (legacy 32-bit or 64-bit only)")]
    AddressingMode(AddressingMode),
    /// The context image does not lie inside the vGPU's graphics memory.
    #[error("context image at {lrca:#x} (+{size:#x}) is outside the vGPU's graphics memory")]
    OutsideWindows {
        /// GGTT address of the context.
        lrca: u64,
        /// Its size.
        size: u64,
    },
}

/// An execlist context descriptor as written to ELSP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextDescriptor(pub u64);

impl ContextDescriptor {
    /// Bit 0: the element is valid.
    pub fn valid(&self) -> bool {
        self.0 & 1 != 0
    }

    /// Bit 8: privileged.
    pub fn privileged(&self) -> bool {
        self.0 & (1 << 8) != 0
    }

    /// Bits 4:3.
    pub fn addressing_mode(&self) -> AddressingMode {
        match (self.0 >> 3) & 3 {
            0 => AddressingMode::Advanced,
            1 => AddressingMode::Legacy32,
            2 => AddressingMode::AdvancedAd,
            _ => AddressingMode::Legacy64,
        }
    }

    /// GGTT address of the context image (bits 31:12; page 0 is the per-process status page).
    pub fn lrca(&self) -> u64 {
        self.0 & 0xffff_f000
    }

    /// The upper dword: i915's context ID.
    pub fn context_id(&self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Whether two descriptors name the same context (same ID and image).
    pub fn same_context(&self, other: &ContextDescriptor) -> bool {
        self.context_id() == other.context_id() && self.lrca() == other.lrca()
    }

    /// Validates a valid element for a vGPU owning `windows`, whose engine's context images are
    /// `size` bytes.
    pub fn validate(&self, windows: &GmWindows, size: u64) -> Result<(), DescriptorError> {
        if !self.privileged() {
            return Err(DescriptorError::NotPrivileged);
        }
        match self.addressing_mode() {
            AddressingMode::Legacy32 | AddressingMode::Legacy64 => {}
            m => return Err(DescriptorError::AddressingMode(m)),
        }
        if !windows.contains(self.lrca(), size) {
            return Err(DescriptorError::OutsideWindows { lrca: self.lrca(), size });
        }
        Ok(())
    }
}
