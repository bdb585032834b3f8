//! The command scanner: walk a ring from head to tail and every batch buffer it reaches, copying
//! each buffer into a shadow buffer first and scanning only the copy.
//!
//! The walk is iterative: batches found while scanning are queued and scanned in turn, each copied
//! once per (address space, address, nesting level), so a batch that jumps to itself becomes a loop
//! in the shadow copy (a hang the engine watchdog handles) instead of an endless scan. A byte budget
//! bounds the total work.

use std::collections::HashMap;

use vm_memory::GuestMemory;

use super::error::{BufferKind, Location, Reason, ScanError};
use super::fastwalk;
use super::memory::{copy_from_gm, AddrSpace, CopyFault, GmTranslate, GmWindows, PAGE_SIZE};
use super::table::{CmdDesc, CommandTable, Decoded, ENTRY_FAST, ENTRY_GGTT_AUDIT};
use super::workload::{BufferId, FetchPoint, ScanStats, ScannedWorkload, ShadowBuffer};
use crate::hw::{Engine, Gen};

/// The guest ring as its context describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSpec {
    /// GGTT address of the ring (RING_START), 4 KiB aligned.
    pub start: u64,
    /// Size in bytes: a multiple of 4 KiB, at most 2 MiB.
    pub size: u32,
    /// Head byte offset (RING_HEAD without the wrap count).
    pub head: u32,
    /// Tail byte offset (RING_TAIL).
    pub tail: u32,
}

/// Most pages one extension of a batch shadow copies.
const MAX_CHUNK_PAGES: u64 = 16;

/// Bounds on the work one scan may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanLimits {
    /// Most bytes copied from guest memory, over the ring and every batch.
    pub max_bytes: u64,
    /// Most distinct batch buffers.
    pub max_batches: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits { max_bytes: 32 << 20, max_batches: 4096 }
    }
}

/// Everything the scanner needs to know about the workload besides guest memory.
#[derive(Clone, Copy, Debug)]
pub struct ScanParams {
    /// Generation of the platform (selects the command table).
    pub gen: Gen,
    /// Engine the workload runs on.
    pub engine: Engine,
    /// The vGPU's GGTT windows; every GGTT access must fall inside one of them.
    pub windows: GmWindows,
    /// The ring.
    pub ring: RingSpec,
    /// Address space of surface and state addresses that carry no GGTT selector (2D/3D/media
    /// surfaces): [`AddrSpace::Ppgtt`] for a context with a PPGTT (every execlist context of a
    /// Gen8+ guest driver), [`AddrSpace::Ggtt`] otherwise, in which case they are audited too.
    pub surfaces: AddrSpace,
    /// GGTT address of the status page index-mode post-sync writes address: in execlist mode the
    /// running context's per-process status page (page 0 of the guest's context image, at its
    /// LRCA). Index-mode writes are rewritten into absolute GGTT writes there, audited like any
    /// store; `None` rejects them.
    pub hwsp: Option<u64>,
    /// Work bounds.
    pub limits: ScanLimits,
}

/// What the scanner did with a command, for observers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted unchanged.
    Accepted,
    /// Accepted after rewriting the copy (interrupt removed, write redirected, ...).
    Patched,
}

/// Sees every command the scanner accepts, e.g. to print a listing. The unit type observes nothing
/// and costs nothing.
pub trait ScanObserver {
    /// A command was accepted; `cmd` is the shadow copy after any patch.
    fn command(&mut self, buffer: BufferKind, offset: u64, desc: &'static CmdDesc, cmd: &[u32], verdict: Verdict);
    /// A run of `count` MI_NOOP dwords was skipped.
    fn noops(&mut self, _buffer: BufferKind, _offset: u64, _count: u64) {}
    /// Whether this observer wants to see every command. When `false`, the scanner walks
    /// commands that need no audit without calling [`ScanObserver::command`] for them.
    fn wants_every_command(&self) -> bool {
        true
    }
}

impl ScanObserver for () {
    fn wants_every_command(&self) -> bool {
        false
    }

    #[inline(always)]
    fn command(&mut self, _: BufferKind, _: u64, _: &'static CmdDesc, _: &[u32], _: Verdict) {}
}

/// Scans a guest ring and every batch it reaches; returns the shadow workload or why it is rejected.
///
/// ```
/// use shadowgpu::cmd::{scan_ring, AddrSpace, GmRange, GmWindows, LinearTranslation, RingSpec, ScanLimits, ScanParams};
/// use shadowgpu::hw::{Engine, Gen};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// // 64 KiB of guest memory; the vGPU's aperture window is GGTT 0x10_0000..0x11_0000, mapped onto it.
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
/// let mut gtt = LinearTranslation::new();
/// gtt.map(AddrSpace::Ggtt, GmRange::new(0x10_0000, 0x1_0000), GuestAddress(0));
/// // Ring at 0x10_0000: MI_STORE_DATA_IMM (GGTT) of 42 to 0x10_8000, then MI_USER_INTERRUPT.
/// let ring: [u32; 6] = [0x1040_0002, 0x10_8000, 0, 42, 0x0100_0000, 0];
/// for (i, dw) in ring.iter().enumerate() {
///     mem.write_obj(*dw, GuestAddress(4 * i as u64)).unwrap();
/// }
/// let params = ScanParams {
///     gen: Gen::Gen9,
///     engine: Engine::Rcs,
///     windows: GmWindows { aperture: GmRange::new(0x10_0000, 0x1_0000), hidden: GmRange::default() },
///     ring: RingSpec { start: 0x10_0000, size: 4096, head: 0, tail: 24 },
///     surfaces: AddrSpace::Ppgtt,
///     hwsp: None,
///     limits: ScanLimits::default(),
/// };
/// let w = scan_ring(&mem, &gtt, &params, &mut ()).unwrap();
/// assert_eq!(w.ring.dwords[4], 0); // the interrupt request became MI_NOOP...
/// assert!(w.events.contains(shadowgpu::cmd::Events::USER_INTERRUPT)); // ...and is raised at completion.
/// ```
pub fn scan_ring<M, T, O>(
    mem: &M,
    xlate: &T,
    params: &ScanParams,
    observer: &mut O,
) -> Result<ScannedWorkload, ScanError>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
    O: ScanObserver + ?Sized,
{
    scan_ring_as(mem, xlate, params, observer, false)
}

/// Scans a guest ring as [`scan_ring`] does, but leaves the batches it starts to be fetched when
/// the engine reaches them: each ring-level MI_BATCH_BUFFER_START is listed in
/// [`ScannedWorkload::fetches`] instead of being followed. The backend stops the engine there and
/// asks for the batch, which [`scan_fetch`] then copies and scans, so a batch holds what the
/// guest's earlier work (on this engine or another, or its CPU) wrote into it before the engine
/// got there, as on the hardware.
pub fn scan_fetching<M, T, O>(
    mem: &M,
    xlate: &T,
    params: &ScanParams,
    observer: &mut O,
) -> Result<ScannedWorkload, ScanError>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
    O: ScanObserver + ?Sized,
{
    scan_ring_as(mem, xlate, params, observer, true)
}

/// [`scan_ring`], or with `defer` [`scan_fetching`].
fn scan_ring_as<M, T, O>(
    mem: &M,
    xlate: &T,
    params: &ScanParams,
    observer: &mut O,
    defer: bool,
) -> Result<ScannedWorkload, ScanError>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
    O: ScanObserver + ?Sized,
{
    let mut s = Scanner::new(mem, xlate, params, observer, BufferKind::Ring);
    s.defer = defer;
    s.copy_ring()?;
    s.walk_all()
}

/// Copies and scans the batch `point` starts, with every batch it reaches (its second-level
/// batches, the batches it chains to), at the moment the engine reaches the start. The batch is
/// `batches[0]` of the result. A chained start back into a batch this fetch already copied (a
/// loop, such as a spinner that jumps to itself until the CPU ends it) is a fetch point again, so
/// each pass of a loop sees the memory as it is then. `point.buffer` and `point.dword` are not used.
pub fn scan_fetch<M, T, O>(
    mem: &M,
    xlate: &T,
    params: &ScanParams,
    point: &FetchPoint,
    observer: &mut O,
) -> Result<ScannedWorkload, ScanError>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
    O: ScanObserver + ?Sized,
{
    let mut s = Scanner::new(mem, xlate, params, observer, BufferKind::Ring);
    s.defer = true;
    let kind = BufferKind::Batch { level: point.level, space: point.space, gma: point.gma };
    if !(1..=2).contains(&point.level) {
        let at = Location { buffer: kind, offset: 0, command: None };
        return Err(ScanError { at, reason: Reason::Nesting("a batch level other than 1 or 2") });
    }
    s.batch(point.space, point.gma, point.level)
        .map_err(|reason| ScanError { at: Location { buffer: kind, offset: 0, command: None }, reason })?;
    s.walk_all()
}

/// Scans `dwords`, a command stream the host assembled (an indirect-context workaround batch
/// followed by a start of the per-context batch, say), as if it were the ring: every batch it
/// starts is copied, scanned and relocated as for [`scan_ring`]. `params.ring` is not used.
pub fn scan_dwords<M, T>(
    mem: &M,
    xlate: &T,
    params: &ScanParams,
    dwords: Vec<u32>,
) -> Result<ScannedWorkload, ScanError>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
{
    let mut quiet = ();
    let mut s = Scanner::new(mem, xlate, params, &mut quiet, BufferKind::Ring);
    s.out.ring.dwords = dwords;
    s.walk_all()
}

/// Scans `dwords`, the engine-context part of a context image (from dword 0x50 of the
/// register-state page to the end of the image), as the command stream the engine executes when
/// it restores the context: the same table and register audit as a ring, but no batch may start
/// from it and no page-table root may be loaded by it (the shadow context owns the roots).
/// `params.ring` is not used. Patches (interrupts neutralised, registers redirected) are made in
/// place.
pub fn scan_context_image<M, T>(
    mem: &M,
    xlate: &T,
    params: &ScanParams,
    dwords: &mut Vec<u32>,
) -> Result<ScanStats, ScanError>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
{
    let mut quiet = ();
    let mut s = Scanner::new(mem, xlate, params, &mut quiet, BufferKind::Context);
    s.walk_dwords(0, BufferKind::Context, dwords)?;
    if let Some(load) = s.out.root_loads.first() {
        let at = Location { buffer: BufferKind::Context, offset: load.dword as u64 * 4, command: None };
        return Err(ScanError { at, reason: Reason::Nesting("page-table root load in a context image") });
    }
    Ok(s.out.stats)
}

/// How the walk continues after a command.
pub(super) enum Flow {
    /// With the next command.
    Next,
    /// The buffer ends after this command.
    End,
}

/// Per-buffer facts handlers need.
#[derive(Clone, Copy)]
pub(super) struct BufCtx {
    pub id: BufferId,
    pub kind: BufferKind,
    /// Dword index of the command being handled.
    pub dword: usize,
}

impl BufCtx {
    pub fn level(&self) -> u8 {
        match self.kind {
            BufferKind::Ring | BufferKind::Context => 0,
            BufferKind::Batch { level, .. } => level,
        }
    }

    pub fn space(&self) -> AddrSpace {
        match self.kind {
            BufferKind::Ring | BufferKind::Context => AddrSpace::Ggtt,
            BufferKind::Batch { space, .. } => space,
        }
    }
}

pub(super) struct Scanner<'a, M: ?Sized, T: ?Sized, O: ?Sized> {
    pub mem: &'a M,
    pub xlate: &'a T,
    pub p: &'a ScanParams,
    pub table: &'static CommandTable,
    pub obs: &'a mut O,
    pub out: ScannedWorkload,
    seen: HashMap<(AddrSpace, u64, u8), usize>,
    queue: Vec<BufferId>,
    history: fastwalk::History,
    /// Batch starts from the ring, and chained starts back into a copied batch, become fetch
    /// points instead of being followed.
    pub defer: bool,
}

impl<'a, M, T, O> Scanner<'a, M, T, O>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
    O: ScanObserver + ?Sized,
{
    fn new(mem: &'a M, xlate: &'a T, p: &'a ScanParams, obs: &'a mut O, first: BufferKind) -> Self {
        Scanner {
            mem,
            xlate,
            p,
            table: CommandTable::for_gen(p.gen),
            obs,
            out: ScannedWorkload::empty(first),
            seen: HashMap::new(),
            queue: Vec::new(),
            history: fastwalk::History::new(),
            defer: false,
        }
    }

    /// Scans the ring shadow, then every batch it reaches, and returns the workload.
    fn walk_all(mut self) -> Result<ScannedWorkload, ScanError> {
        self.walk(0)?;
        while let Some(id) = self.queue.pop() {
            self.walk(id)?;
        }
        Ok(self.out)
    }

    fn ring_error(&self, reason: Reason) -> ScanError {
        ScanError { at: Location { buffer: BufferKind::Ring, offset: 0, command: None }, reason }
    }

    fn charge(&mut self, bytes: u64) -> Result<(), Reason> {
        let total = self.out.stats.bytes_copied.saturating_add(bytes);
        if total > self.p.limits.max_bytes {
            return Err(Reason::Budget { limit: self.p.limits.max_bytes });
        }
        self.out.stats.bytes_copied = total;
        Ok(())
    }

    /// Validates the ring and copies `[head, tail)` (with wrap-around) into the ring shadow.
    fn copy_ring(&mut self) -> Result<(), ScanError> {
        let r = self.p.ring;
        let bad = |why| self.ring_error(Reason::BadRing(why));
        if r.start % PAGE_SIZE != 0 {
            return Err(bad("start is not 4 KiB aligned"));
        }
        if r.size == 0 || u64::from(r.size) % PAGE_SIZE != 0 || r.size > 2 << 20 {
            return Err(bad("size is not a multiple of 4 KiB up to 2 MiB"));
        }
        if r.head >= r.size || r.tail >= r.size {
            return Err(bad("head or tail beyond the ring"));
        }
        if r.head % 4 != 0 || r.tail % 8 != 0 {
            return Err(bad("head not dword aligned or tail not qword aligned"));
        }
        if !self.p.windows.contains(r.start, u64::from(r.size)) {
            return Err(self.ring_error(Reason::AddressOutsideWindows {
                what: "ring buffer",
                addr: r.start,
                size: u64::from(r.size),
            }));
        }
        let len = if r.tail >= r.head { r.tail - r.head } else { r.size - r.head + r.tail };
        self.charge(u64::from(len)).map_err(|e| self.ring_error(e))?;
        let mut dwords = vec![0u32; (len / 4) as usize];
        let bytes = zerocopy::IntoBytes::as_mut_bytes(dwords.as_mut_slice());
        let first = (r.size - r.head).min(len) as usize;
        let (a, b) = bytes.split_at_mut(first);
        let fault = |f| self.ring_error(fault_reason(AddrSpace::Ggtt, f));
        copy_from_gm(self.mem, self.xlate, AddrSpace::Ggtt, r.start + u64::from(r.head), a).map_err(fault)?;
        copy_from_gm(self.mem, self.xlate, AddrSpace::Ggtt, r.start, b).map_err(fault)?;
        for d in dwords.iter_mut() {
            *d = u32::from_le(*d);
        }
        self.out.ring.dwords = dwords;
        Ok(())
    }

    /// Whether this scan already copied the batch at (`space`, `gma`, `level`).
    pub(super) fn copied(&self, space: AddrSpace, gma: u64, level: u8) -> bool {
        self.seen.contains_key(&(space, gma, level))
    }

    /// Returns the batch id for a batch start, queuing a new shadow buffer on first sight.
    pub(super) fn batch(&mut self, space: AddrSpace, gma: u64, level: u8) -> Result<usize, Reason> {
        if let Some(&i) = self.seen.get(&(space, gma, level)) {
            return Ok(i);
        }
        if self.out.batches.len() >= self.p.limits.max_batches {
            return Err(Reason::TooManyBuffers(self.p.limits.max_batches));
        }
        let i = self.out.batches.len();
        self.out.batches.push(ShadowBuffer { kind: BufferKind::Batch { level, space, gma }, dwords: Vec::new() });
        self.seen.insert((space, gma, level), i);
        self.queue.push(i + 1);
        Ok(i)
    }

    /// Copies the next chunk of a batch into its shadow: to the next page boundary, then as many
    /// whole pages again as the shadow already holds (doubling, up to [`MAX_CHUNK_PAGES`]), so long
    /// batches are copied in few large chunks and short ones barely past their end. A page after
    /// the first that is unmapped or over budget ends the chunk early; the first one is an error.
    fn extend(&mut self, kind: BufferKind, dwords: &mut Vec<u32>) -> Result<(), Reason> {
        let BufferKind::Batch { space, gma, .. } = kind else {
            return Err(Reason::Unterminated(dwords.len() as u64 * 4));
        };
        let pages = (dwords.len() as u64 * 4 / PAGE_SIZE).clamp(1, MAX_CHUNK_PAGES);
        for n in 0..pages {
            match self.extend_page(space, gma, dwords) {
                Ok(()) => {}
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Copies the batch's bytes from the end of the shadow to the next page boundary.
    fn extend_page(&mut self, space: AddrSpace, gma: u64, dwords: &mut Vec<u32>) -> Result<(), Reason> {
        let have = dwords.len() as u64 * 4;
        let at = gma.checked_add(have).ok_or(Reason::Unterminated(have))?;
        let chunk = PAGE_SIZE - at % PAGE_SIZE;
        self.charge(chunk)?;
        let old = dwords.len();
        dwords.resize(old + (chunk / 4) as usize, 0);
        let tail = dwords.get_mut(old..).unwrap_or_default();
        let copied = copy_from_gm(self.mem, self.xlate, space, at, zerocopy::IntoBytes::as_mut_bytes(tail));
        if let Err(f) = copied {
            dwords.truncate(old);
            self.out.stats.bytes_copied -= chunk;
            return Err(fault_reason(space, f));
        }
        for d in tail.iter_mut() {
            *d = u32::from_le(*d);
        }
        Ok(())
    }

    /// Scans one buffer to its end.
    fn walk(&mut self, id: BufferId) -> Result<(), ScanError> {
        let (kind, mut dwords) = match id.checked_sub(1) {
            None => (BufferKind::Ring, std::mem::take(&mut self.out.ring.dwords)),
            Some(i) => match self.out.batches.get_mut(i) {
                Some(b) => (b.kind, std::mem::take(&mut b.dwords)),
                None => return Ok(()),
            },
        };
        let result = self.walk_dwords(id, kind, &mut dwords);
        match id.checked_sub(1) {
            None => self.out.ring.dwords = dwords,
            Some(i) => {
                if let Some(b) = self.out.batches.get_mut(i) {
                    b.dwords = dwords;
                }
            }
        }
        result
    }

    fn walk_dwords(&mut self, id: BufferId, kind: BufferKind, dwords: &mut Vec<u32>) -> Result<(), ScanError> {
        let engine = self.p.engine;
        let mut i = 0usize;
        let at = |i: usize, command| Location { buffer: kind, offset: i as u64 * 4, command };
        let fast = !self.obs.wants_every_command();
        let ft = self.table.fast_table(engine);
        let want = ENTRY_FAST | ft.rule;
        let want_mask = match self.p.surfaces {
            AddrSpace::Ppgtt => want,
            AddrSpace::Ggtt => want | ENTRY_GGTT_AUDIT,
        };
        let rule = fastwalk::Rule { ft, want_mask, want };
        loop {
            if fast {
                // MI_NOOP and the commands of the engine's main type that need only their length
                // (most 3D, media and video state; blits with PPGTT surfaces) take the fast walk.
                // Its length comes from dword 0 alone with the length rule most of these commands
                // share, and the table entry confirms the command needs no audit and follows that
                // rule. Anything else leaves it for the general path below.
                let w = fastwalk::walk(&rule, dwords, i, &mut self.history);
                self.out.stats.commands += w.commands;
                self.out.stats.noops += w.noops;
                i = w.end;
            }
            if i >= dwords.len() {
                if !matches!(kind, BufferKind::Batch { .. }) {
                    return Ok(());
                }
                self.extend(kind, dwords).map_err(|reason| ScanError { at: at(i, None), reason })?;
                continue;
            }
            let dw0 = dwords.get(i).copied().unwrap_or(0);
            if dw0 == 0 {
                let run = dwords.get(i..).map_or(0, |rest| rest.iter().take_while(|&&d| d == 0).count());
                self.obs.noops(kind, i as u64 * 4, run as u64);
                self.out.stats.noops += run as u64;
                i += run;
                continue;
            }
            let (decoded, len) = self.table.decode_with_len(engine, dw0);
            let desc = match decoded {
                Decoded::Command(d) => d,
                Decoded::WrongEngine(d) => {
                    return Err(ScanError { at: at(i, Some(d.name)), reason: Reason::WrongEngine(engine) })
                }
                Decoded::Unknown => {
                    return Err(ScanError { at: at(i, None), reason: Reason::UnknownCommand { dw0, engine } })
                }
            };
            let len = len as usize;
            while i + len > dwords.len() {
                if !matches!(kind, BufferKind::Batch { .. }) {
                    let reason = Reason::Truncated { len: len as u32, available: (dwords.len() - i) as u64 };
                    return Err(ScanError { at: at(i, Some(desc.name)), reason });
                }
                self.extend(kind, dwords).map_err(|reason| ScanError { at: at(i, Some(desc.name)), reason })?;
            }
            let ctx = BufCtx { id, kind, dword: i };
            let Some(cmd) = dwords.get_mut(i..i + len) else {
                return Err(ScanError { at: at(i, Some(desc.name)), reason: Reason::Unterminated(i as u64 * 4) });
            };
            let patched_before = self.out.stats.patched;
            let flow =
                self.handle(desc, cmd, ctx).map_err(|reason| ScanError { at: at(i, Some(desc.name)), reason })?;
            self.out.stats.commands += 1;
            let verdict = if self.out.stats.patched != patched_before { Verdict::Patched } else { Verdict::Accepted };
            self.obs.command(kind, i as u64 * 4, desc, cmd, verdict);
            i += len;
            if let Flow::End = flow {
                match kind {
                    BufferKind::Batch { .. } => dwords.truncate(i), // the shadow ends at the batch's end
                    // A context image keeps its size; what follows its end is not scanned, so
                    // it becomes MI_NOOP whether or not the engine would read past the end.
                    _ => dwords.get_mut(i..).unwrap_or_default().fill(0),
                }
                return Ok(());
            }
        }
    }
}

pub(crate) fn fault_reason(space: AddrSpace, f: CopyFault) -> Reason {
    match f {
        CopyFault::Unmapped(gma) => Reason::Unmapped { space, gma },
        CopyFault::BadGuestAddress(gpa) => Reason::BadGuestMemory(gpa),
    }
}
