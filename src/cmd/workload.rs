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

/// A batch start the engine resolves when it reaches it (see [`scan_fetching`](super::scan_fetching)):
/// the batch is copied and scanned then, not when the stream holding the start was scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchPoint {
    /// Buffer holding the MI_BATCH_BUFFER_START.
    pub buffer: BufferId,
    /// Dword index of the MI_BATCH_BUFFER_START in that buffer.
    pub dword: usize,
    /// Address space of the batch it starts.
    pub space: super::AddrSpace,
    /// Its guest graphics address.
    pub gma: u64,
    /// Its nesting level (1 or 2).
    pub level: u8,
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
    /// Batch starts resolved when the engine reaches them (a [`scan_fetching`](super::scan_fetching)
    /// scan): ring-level starts, and chained starts back into a batch already copied (loops).
    pub fetches: Vec<FetchPoint>,
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
            fetches: Vec::new(),
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
                set_start(buf, r.dword, addr);
            }
        }
    }

    /// Points every fetch point's batch start at `trap(i)` (a GGTT address where the backend
    /// resolves fetch point `i`), as [`relocate`](Self::relocate) does for the shadow batches.
    pub fn relocate_fetches(&mut self, mut trap: impl FnMut(usize) -> u64) {
        for (i, f) in self.fetches.clone().into_iter().enumerate() {
            let addr = trap(i);
            if let Some(buf) = self.buffer_mut(f.buffer) {
                set_start(buf, f.dword, addr);
            }
        }
    }

    /// Resolves every fetch point now instead of when the engine reaches it (a backend that
    /// cannot stop its engine at a fetch point): `trees[i]` is what [`scan_fetch`](super::scan_fetch)
    /// made of fetch point `i`. Its batches are appended and the start relocated to the first;
    /// a loop in a tree (its own fetch points) runs in that tree's copy. False if `trees` does not
    /// match the fetch points (nothing is changed then).
    pub fn absorb_fetches(&mut self, trees: Vec<ScannedWorkload>) -> bool {
        if trees.len() != self.fetches.len() || trees.iter().any(|t| t.batches.is_empty()) {
            return false;
        }
        // Every loop must have its copy in its tree: a start left unrelocated would keep the
        // guest's address.
        let has_copy = |t: &ScannedWorkload, l: &FetchPoint| {
            let kind = BufferKind::Batch { level: l.level, space: l.space, gma: l.gma };
            l.buffer > 0 && t.batches.iter().any(|b| b.kind == kind)
        };
        if !trees.iter().all(|t| t.fetches.iter().all(|l| has_copy(t, l))) {
            return false;
        }
        let fetches = std::mem::take(&mut self.fetches);
        for (f, tree) in fetches.into_iter().zip(trees) {
            let offset = self.batches.len();
            // Tree buffer 0 is its empty ring; tree buffer b is batch b - 1, here batch offset + b - 1.
            let id = |b: BufferId| b.checked_add(offset);
            self.relocs.push(Reloc { buffer: f.buffer, dword: f.dword, target: offset });
            for r in &tree.relocs {
                if let Some(buffer) = id(r.buffer).filter(|_| r.buffer > 0) {
                    self.relocs.push(Reloc { buffer, dword: r.dword, target: r.target + offset });
                }
            }
            for l in &tree.fetches {
                let kind = BufferKind::Batch { level: l.level, space: l.space, gma: l.gma };
                let copy = tree.batches.iter().position(|b| b.kind == kind);
                if let (Some(buffer), Some(j)) = (id(l.buffer).filter(|_| l.buffer > 0), copy) {
                    self.relocs.push(Reloc { buffer, dword: l.dword, target: j + offset });
                }
            }
            self.events |= tree.events;
            self.stats.bytes_copied = self.stats.bytes_copied.saturating_add(tree.stats.bytes_copied);
            self.batches.extend(tree.batches);
        }
        true
    }

    /// Total bytes of shadow commands.
    pub fn total_bytes(&self) -> u64 {
        self.ring.len_bytes() + self.batches.iter().map(ShadowBuffer::len_bytes).sum::<u64>()
    }
}

/// Points the MI_BATCH_BUFFER_START at dword `at` of `buf` at GGTT address `addr`.
fn set_start(buf: &mut ShadowBuffer, at: usize, addr: u64) {
    if let Some(dw0) = buf.dwords.get_mut(at) {
        *dw0 &= !MI_BATCH_BUFFER_START_PPGTT;
    }
    if let Some(lo) = buf.dwords.get_mut(at + 1) {
        *lo = (addr as u32) & !3;
    }
    if let Some(hi) = buf.dwords.get_mut(at + 2) {
        *hi = (addr >> 32) as u32;
    }
}
