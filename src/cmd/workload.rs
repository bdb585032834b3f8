//! What a scan produces: the shadow copies that will run, and what completion must do.

use bitflags::bitflags;

use super::error::BufferKind;
use super::regs::RegAccess;

bitflags! {
    /// Interrupts the command stream asked for. The scanner removes the requests from the copy, so
    /// the host engine raises nothing on the guest's behalf; completion raises these instead.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Events: u8 {
        /// MI_USER_INTERRUPT.
        const USER_INTERRUPT = 1 << 0;
        /// PIPE_CONTROL with Notify Enable.
        const PIPE_CONTROL_NOTIFY = 1 << 1;
        /// MI_FLUSH_DW with Notify Enable.
        const FLUSH_DW_NOTIFY = 1 << 2;
    }
}

/// A shadow copy of one guest buffer: only this copy is scanned and executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowBuffer {
    /// What the guest buffer was.
    pub kind: BufferKind,
    /// The scanned (and patched) commands.
    pub dwords: Vec<u32>,
}

impl ShadowBuffer {
    /// Size of the copy in bytes.
    pub fn len_bytes(&self) -> u64 {
        (self.dwords.len() as u64) * 4
    }
}

/// Address-space bit of MI_BATCH_BUFFER_START (set: PPGTT).
const MI_BATCH_BUFFER_START_PPGTT: u32 = 1 << 8;

/// Index of a buffer in a [`ScannedWorkload`]: 0 is the ring, `i + 1` is `batches[i]`.
pub type BufferId = usize;

/// A batch start in a shadow buffer that must point at a shadow batch before execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloc {
    /// Buffer holding the MI_BATCH_BUFFER_START.
    pub buffer: BufferId,
    /// Dword index of the MI_BATCH_BUFFER_START in that buffer.
    pub dword: usize,
    /// Index into [`ScannedWorkload::batches`] of the batch it starts.
    pub target: usize,
}

/// An MI_LOAD_REGISTER_IMM of a page-table root (PDPn / PML4) found in the stream: its value must
/// be replaced by the shadow page table's address before the workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootLoad {
    /// Buffer holding the LRI.
    pub buffer: BufferId,
    /// Dword index of the LRI's header: loads with the same `(buffer, cmd)` are one command.
    pub cmd: usize,
    /// Dword index of the value dword.
    pub dword: usize,
    /// The register loaded.
    pub reg: u32,
}

/// Register accesses of non-privileged batches that the hardware would not make, dropped from the
/// copy (the command became MI_NOOP), by register and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroppedAccess {
    /// The register (absolute offset).
    pub reg: u32,
    /// Read (MI_STORE_REGISTER_MEM, an LRR source) or write.
    pub access: RegAccess,
    /// How many times in this workload.
    pub count: u64,
}

/// Distinct dropped accesses one workload lists; more are counted in [`ScanStats::dropped`] only.
pub const MAX_DROPPED_KINDS: usize = 32;

/// Counters of one scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Commands decoded (MI_NOOP runs count once per dword skipped, in `noops`).
    pub commands: u64,
    /// MI_NOOP dwords skipped.
    pub noops: u64,
    /// Bytes copied from guest memory into shadow buffers.
    pub bytes_copied: u64,
    /// Commands the scanner rewrote (interrupts removed, writes redirected).
    pub patched: u64,
    /// Register accesses of non-privileged batches dropped from the copy.
    pub dropped: u64,
    /// Commands of non-privileged batches the hardware refuses (command privilege violations),
    /// made MI_NOOP in the copy.
    pub dropped_commands: u64,
}

/// The result of scanning a ring (and every batch it reaches): what will run, and what completion
/// must do for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedWorkload {
    /// The ring's commands from head to tail, linearised.
    pub ring: ShadowBuffer,
    /// Every batch buffer reached, each copied once per (space, address, level).
    pub batches: Vec<ShadowBuffer>,
    /// Batch starts to point at the shadow batches.
    pub relocs: Vec<Reloc>,
    /// Page-table root loads to patch.
    pub root_loads: Vec<RootLoad>,
    /// Interrupts to raise at completion.
    pub events: Events,
    /// Register accesses dropped from non-privileged batches (at most [`MAX_DROPPED_KINDS`]).
    pub dropped: Vec<DroppedAccess>,
    /// Counters.
    pub stats: ScanStats,
}

impl ScannedWorkload {
    /// A workload of commands the host wrote itself: a ring and nothing else (no batches, no
    /// interrupts to raise).
    pub fn host_ring(dwords: Vec<u32>) -> Self {
        ScannedWorkload { ring: ShadowBuffer { kind: BufferKind::Ring, dwords }, ..Self::empty(BufferKind::Ring) }
    }

    /// Nothing yet: an empty first buffer of `kind` (the ring, or a context image scanned alone).
    pub(crate) fn empty(kind: BufferKind) -> Self {
        ScannedWorkload {
            ring: ShadowBuffer { kind, dwords: Vec::new() },
            batches: Vec::new(),
            relocs: Vec::new(),
            root_loads: Vec::new(),
            events: Events::empty(),
            dropped: Vec::new(),
            stats: ScanStats::default(),
        }
    }

    /// Records a register access of a non-privileged batch that the copy dropped.
    pub(crate) fn drop_access(&mut self, reg: u32, access: RegAccess) {
        self.stats.dropped = self.stats.dropped.saturating_add(1);
        if let Some(d) = self.dropped.iter_mut().find(|d| d.reg == reg && d.access == access) {
            d.count = d.count.saturating_add(1);
        } else if self.dropped.len() < MAX_DROPPED_KINDS {
            self.dropped.push(DroppedAccess { reg, access, count: 1 });
        }
    }

    /// The buffer with this id.
    pub fn buffer(&self, id: BufferId) -> Option<&ShadowBuffer> {
        match id.checked_sub(1) {
            None => Some(&self.ring),
            Some(i) => self.batches.get(i),
        }
    }

    /// Replaces dword `dword` of buffer `id` (a value the workload must patch before it runs,
    /// such as a page-table root load's). False if there is no such dword.
    pub fn patch(&mut self, id: BufferId, dword: usize, value: u32) -> bool {
        match self.buffer_mut(id).and_then(|b| b.dwords.get_mut(dword)) {
            Some(d) => {
                *d = value;
                true
            }
            None => false,
        }
    }

    fn buffer_mut(&mut self, id: BufferId) -> Option<&mut ShadowBuffer> {
        match id.checked_sub(1) {
            None => Some(&mut self.ring),
            Some(i) => self.batches.get_mut(i),
        }
    }

    /// Points every batch start at the shadow batches. `place` is called once per batch, in order,
    /// and returns the GGTT address where that shadow batch will be visible to the engine: shadow
    /// batches live in the host's part of the GGTT, so each start becomes a GGTT start (the copy
    /// was scanned under the rules of its original space, which the host executes it by).
    pub fn relocate(&mut self, mut place: impl FnMut(usize, &ShadowBuffer) -> u64) {
        let addrs: Vec<u64> = self.batches.iter().enumerate().map(|(i, b)| place(i, b)).collect();
        for r in self.relocs.clone() {
            let Some(&addr) = addrs.get(r.target) else {
                continue;
            };
            if let Some(buf) = self.buffer_mut(r.buffer) {
                if let Some(dw0) = buf.dwords.get_mut(r.dword) {
                    *dw0 &= !MI_BATCH_BUFFER_START_PPGTT;
                }
                if let Some(lo) = buf.dwords.get_mut(r.dword + 1) {
                    *lo = (addr as u32) & !3;
                }
                if let Some(hi) = buf.dwords.get_mut(r.dword + 2) {
                    *hi = (addr >> 32) as u32;
                }
            }
        }
    }

    /// Total bytes of shadow commands.
    pub fn total_bytes(&self) -> u64 {
        self.ring.len_bytes() + self.batches.iter().map(ShadowBuffer::len_bytes).sum::<u64>()
    }
}
