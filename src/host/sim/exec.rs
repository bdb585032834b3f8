//! The software GPU's command streamer: context restore and save, the ring and two batch levels,
//! and the MI commands it really executes. Blits are in [`super::blit`].

use std::collections::HashMap;
use std::sync::Arc;

use super::cost::CostModel;
use super::memory::{MemFault, MemView, SimMemory};
use super::regs::{apply_masked, engine_local, masked, GlobalRegs};
use crate::cmd::{AddrSpace, CmdDesc, CommandTable, Decoded, Handler, PAGE_SIZE};
use crate::host::RunReport;
use crate::hw::{nonpriv, Engine, Gen};
use crate::mm::ShadowRoot;

/// Register offsets relative to the engine base.
pub mod reg {
    /// RING_TAIL.
    pub const RING_TAIL: u32 = 0x30;
    /// RING_HEAD.
    pub const RING_HEAD: u32 = 0x34;
    /// RING_START.
    pub const RING_START: u32 = 0x38;
    /// RING_CTL.
    pub const RING_CTL: u32 = 0x3c;
    /// HWS_PGA (the engine's global status page).
    pub const HWS_PGA: u32 = 0x80;
    /// BB_PER_CTX_PTR.
    pub const BB_PER_CTX_PTR: u32 = 0x1c0;
    /// INDIRECT_CTX.
    pub const INDIRECT_CTX: u32 = 0x1c4;
    /// PDP0 lower dword (PDPn at + 8n, upper dword at + 4).
    pub const PDP0_LDW: u32 = 0x270;
    /// TIMESTAMP, low dword.
    pub const TIMESTAMP: u32 = 0x358;
    /// CTX_TIMESTAMP.
    pub const CTX_TIMESTAMP: u32 = 0x3a8;
    /// BB_ADDR_UDW: upper dword of the level-1 batch fetch address.
    pub const BB_ADDR_UDW: u32 = 0x168;
    /// BB_ADDR: the level-1 batch fetch address.
    pub const BB_ADDR: u32 = 0x140;
    /// BB_STATE: the level-1 batch's state.
    pub const BB_STATE: u32 = 0x110;
    /// SBB_ADDR_UDW: upper dword of the second-level batch fetch address.
    pub const SBB_ADDR_UDW: u32 = 0x11c;
    /// SBB_ADDR: the second-level batch fetch address.
    pub const SBB_ADDR: u32 = 0x114;
    /// SBB_STATE: the second-level batch's state.
    pub const SBB_STATE: u32 = 0x118;
    /// BB_OFFSET: what Add Offset Enable adds to a batch start's address (Gen9).
    pub const BB_OFFSET: u32 = 0x158;
    /// CS_GPR0 lower dword (16 × 64-bit).
    pub const GPR0: u32 = 0x600;
    /// RING_FORCE_TO_NONPRIV slot 0 (12 slots): each names a register non-privileged batches may
    /// access.
    pub const FORCE_TO_NONPRIV: u32 = 0x4d0;
}

/// MMIO offsets are 23 bits, dword aligned.
const REG_MASK: u32 = 0x7f_fffc;
/// Longest command the streamer fetches (video commands have 12-bit length fields).
const MAX_CMD_DWORDS: usize = 4098;

/// Why execution stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// Past the hang timeout.
    Hang(&'static str),
    /// A fault.
    Fault(String),
    /// Preempted at a preemption point: the engine's registers say where it stopped (ring head,
    /// batch state), for the save.
    Preempted,
    /// Stopped by an engine reset the host asked for ([`HostGpu::abort`](crate::host::HostGpu)).
    Aborted,
    /// A batch fetched when the engine reached it was refused.
    Refused(String),
}

impl From<MemFault> for Stop {
    fn from(f: MemFault) -> Self {
        Stop::Fault(f.to_string())
    }
}

/// What a command does to the flow of the stream.
enum Flow {
    Next,
    End,
    Start {
        addr: u64,
        space: AddrSpace,
        second: bool,
    },
    /// Preempted at this command: after it (MI_ARB_CHECK) or, with `again`, before it (a
    /// semaphore wait that has not passed).
    Preempt {
        again: bool,
    },
}

/// Where the command streamer may be preempted. Gen9's render engine stops between any two
/// commands; the other engines at MI_ARB_CHECK and at batch and ring command boundaries; every
/// engine in a semaphore wait. MI_ARB_ON_OFF turns preemption off and on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Point {
    /// Between two ring commands.
    Ring,
    /// At the start or end of a batch.
    Batch,
    /// Between two commands of a batch.
    Command,
}

/// BB_STATE / SBB_STATE as the model saves them: the batch is running (bit 0) and in the PPGTT
/// (bit 5).
const BB_VALID: u32 = 1 << 0;
const BB_PPGTT: u32 = 1 << 5;

/// The fetch position of one batch level.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    space: AddrSpace,
    addr: u64,
    privileged: bool,
}

impl Frame {
    /// A privileged batch at GGTT `addr`.
    pub fn ggtt(addr: u64) -> Self {
        Frame { space: AddrSpace::Ggtt, addr, privileged: true }
    }
}

/// The persistent state of one engine: its registers and clock.
#[derive(Debug)]
pub(super) struct EngineCore {
    pub engine: Engine,
    pub gen: Gen,
    /// The engine's own registers (see [`regs`](super::regs)).
    regs: HashMap<u32, u32>,
    /// The registers every engine shares.
    global: Arc<GlobalRegs>,
    /// Total engine time since creation (the TIMESTAMP clock).
    pub clock_ns: u64,
    /// `clock_ns`, readable while the engine runs (the scheduler's engine-time latencies).
    pub clock: Arc<std::sync::atomic::AtomicU64>,
    /// MI_MATH's internal registers: SRCA, SRCB, ACCU, ZF, CF.
    alu: [u64; 5],
}

impl EngineCore {
    pub fn new(engine: Engine, gen: Gen, global: Arc<GlobalRegs>) -> Self {
        let clock = Arc::default();
        EngineCore { engine, gen, regs: HashMap::new(), global, clock_ns: 0, clock, alu: [0; 5] }
    }

    /// Power-on state: every register of the engine 0, and no reset pending.
    pub fn reset(&mut self) {
        self.regs.clear();
        self.alu = [0; 5];
        self.global.take_reset(self.engine);
    }

    fn base(&self) -> u32 {
        self.engine.mmio_base()
    }

    /// Engine clock ticks for `ns`.
    fn ticks(&self, ns: u64) -> u64 {
        self.gen.timestamp_ticks(ns)
    }

    pub fn read(&self, r: u32) -> u32 {
        let r = r & REG_MASK;
        let off = r.wrapping_sub(self.base());
        if off == reg::TIMESTAMP || off == reg::TIMESTAMP + 4 {
            let t = self.ticks(self.clock_ns);
            return if off == reg::TIMESTAMP { t as u32 } else { (t >> 32) as u32 };
        }
        if engine_local(self.engine, r) {
            self.regs.get(&r).copied().unwrap_or(0)
        } else {
            self.global.read(r)
        }
    }

    /// A write from the host (MMIO, the register switch).
    pub fn write(&mut self, r: u32, v: u32) {
        let r = r & REG_MASK;
        if !engine_local(self.engine, r) {
            return self.global.write(r, v);
        }
        let v = if masked(self.engine, r) { apply_masked(self.regs.get(&r).copied().unwrap_or(0), v) } else { v };
        self.regs.insert(r, v);
    }

    /// A write from the engine's own command stream (a register load, a context restore).
    fn stream_write(&mut self, r: u32, v: u32) {
        let r = r & REG_MASK;
        if engine_local(self.engine, r) {
            self.write(r, v);
        } else {
            self.global.stream_write(self.engine, r, v);
        }
    }

    /// Whether a command stream reset this engine through GDRST (clears the flag).
    fn reset_requested(&self) -> bool {
        self.global.take_reset(self.engine)
    }

    fn rel(&self, off: u32) -> u32 {
        self.read(self.base() + off)
    }

    fn gpr(&self, n: u32) -> u64 {
        let r = self.base() + reg::GPR0 + 8 * n;
        u64::from(self.read(r)) | u64::from(self.read(r + 4)) << 32
    }

    fn set_gpr(&mut self, n: u32, v: u64) {
        let r = self.base() + reg::GPR0 + 8 * n;
        self.write(r, v as u32);
        self.write(r + 4, (v >> 32) as u32);
    }

    /// The page-table root the PDP registers name.
    pub fn root(&self, legacy32: bool) -> ShadowRoot {
        let pdp = |n: u32| {
            let r = self.base() + reg::PDP0_LDW + 8 * n;
            u64::from(self.read(r)) | u64::from(self.read(r + 4)) << 32
        };
        if legacy32 {
            ShadowRoot::L3([pdp(0), pdp(1), pdp(2), pdp(3)])
        } else {
            ShadowRoot::L4(pdp(0))
        }
    }
}

/// Whether a non-privileged batch may write register `r`: its user-mode register list, or a
/// register one of the engine's FORCE_TO_NONPRIV slots opens for writing.
fn nonpriv_writable(core: &EngineCore, r: u32) -> bool {
    let base = core.base();
    nonpriv::user_writable(core.gen, core.engine, r)
        || (0..nonpriv::FORCE_TO_NONPRIV_SLOTS)
            .any(|slot| nonpriv::slot_allows_write(core.read(base + nonpriv::FORCE_TO_NONPRIV + 4 * slot), r))
}

/// Where the streamer fetches the next command.
#[derive(Clone, Copy)]
enum Cursor {
    Ring { start: u64, size: u64, off: u64 },
    Linear { space: AddrSpace, addr: u64 },
}

/// One run of the engine.
pub(super) struct Exec<'a> {
    pub mem: &'a SimMemory,
    pub core: &'a mut EngineCore,
    pub cost: &'a CostModel,
    table: &'static CommandTable,
    /// The page-table root the engine walks: read from the PDP registers whenever a context
    /// restore or a command loads them.
    pub ppgtt: Option<ShadowRoot>,
    /// The context uses a legacy 3-level PPGTT (four PDPs) instead of a PML4.
    pub legacy32: bool,
    /// The buffer executing is privileged: the ring and GGTT batches started from privileged
    /// buffers. A PPGTT batch is not, and nothing it starts is.
    privileged: bool,
    /// GGTT address of the running context's per-process status page.
    pub pphwsp: u64,
    pub ns: u64,
    pub report: RunReport,
    /// GGTT address (or ring position) of the command executing, for reports.
    pub at: u64,
    buf: Vec<u32>,
    /// Asked at each preemption point with the engine time of this run so far: stop now?
    pub preempt: Option<&'a dyn Fn(u64) -> bool>,
    /// Set by the host to stop the run at its next command (an engine reset).
    pub abort: Option<&'a std::sync::atomic::AtomicBool>,
    /// Engine time after which the run is a hang.
    pub timeout_ns: u64,
    /// Resolves a GGTT batch start: a start into the trap window is a fetch point, and this
    /// returns where the fetched batch was placed and how many bytes were copied (`None` for
    /// any other start).
    pub fetch: Option<&'a mut FetchHook<'a>>,
    /// MI_ARB_ON_OFF: preemption allowed.
    arbitration: bool,
    /// Preemption points count (not while workaround batches run).
    pub preemptible: bool,
    /// A command ran in this run: a preemption point before it would make no progress.
    progress: bool,
    /// When the run started, if the engine runs no faster than real time.
    pub real_time: Option<std::time::Instant>,
}

/// Resolves a batch start at a GGTT address: `Some((placed at, bytes copied))` for a fetch point.
pub(super) type FetchHook<'a> = dyn FnMut(u64) -> Result<Option<(u64, u64)>, Stop> + 'a;

/// How far (ns) a real-time engine may run ahead of the wall clock before it waits.
pub(super) const PACE_SLACK_NS: u64 = 200_000;

fn addr64(lo: u32, hi: u32) -> u64 {
    (u64::from(lo) | u64::from(hi) << 32) & 0x0000_ffff_ffff_fffc
}

fn space_of(ggtt: bool) -> AddrSpace {
    if ggtt {
        AddrSpace::Ggtt
    } else {
        AddrSpace::Ppgtt
    }
}

impl<'a> Exec<'a> {
    pub fn new(mem: &'a SimMemory, core: &'a mut EngineCore, cost: &'a CostModel) -> Self {
        let table = CommandTable::for_gen(core.gen);
        Exec {
            mem,
            core,
            cost,
            table,
            ppgtt: None,
            legacy32: false,
            privileged: true,
            pphwsp: 0,
            ns: 0,
            report: RunReport::default(),
            at: 0,
            buf: vec![],
            preempt: None,
            abort: None,
            timeout_ns: cost.hang_timeout_ns,
            fetch: None,
            arbitration: true,
            preemptible: false,
            progress: false,
            real_time: None,
        }
    }

    /// Whether the host stopped the run (an engine reset): checked before every command and
    /// while a semaphore waits.
    fn aborted(&self) -> Result<(), Stop> {
        match self.abort {
            Some(a) if a.load(std::sync::atomic::Ordering::Acquire) => Err(Stop::Aborted),
            _ => Ok(()),
        }
    }

    /// On a real-time engine, waits (with the memory locks let go) while this run's engine time
    /// is ahead of the wall time since it started.
    fn pace(&self, view: &mut MemView<'a>) {
        let Some(t0) = self.real_time else { return };
        let wall = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let ahead = self.ns.saturating_sub(wall);
        if ahead > PACE_SLACK_NS {
            self.mem.pause(view, || std::thread::sleep(std::time::Duration::from_nanos(ahead)));
        }
    }

    /// Where a batch start goes: a GGTT start into the trap window is fetched now.
    /// The engine waits while the host fetches: charged as engine time.
    fn target(&mut self, addr: u64, space: AddrSpace) -> Result<u64, Stop> {
        let fetched = match self.fetch.as_mut() {
            Some(f) if space == AddrSpace::Ggtt => f(addr)?,
            _ => None,
        };
        let Some((at, bytes)) = fetched else { return Ok(addr) };
        self.report.fetches = self.report.fetches.saturating_add(1);
        let ns = self.cost.fetch_ns.saturating_add(bytes.saturating_mul(self.cost.fetch_byte_ps) / 1000);
        self.charge(ns, "fetching a batch")?;
        Ok(at)
    }

    /// Whether to stop at a preemption point of kind `p`.
    fn preempt_here(&self, p: Point) -> bool {
        let engine_allows = p != Point::Command || self.core.engine == Engine::Rcs;
        self.arbitration
            && self.preemptible
            && self.progress
            && engine_allows
            && self.preempt.is_some_and(|stop| stop(self.ns))
    }

    /// Records where the batches stopped, as the engine saves it: level 1 in BB_ADDR/BB_STATE,
    /// level 2 (if `level` is 2) in SBB_ADDR/SBB_STATE.
    fn save_batch_state(&mut self, frames: &[Option<Frame>; 3], level: usize) {
        let base = self.core.base();
        let put = |core: &mut EngineCore, regs: (u32, u32, u32), f: Option<Frame>| {
            let (udw, ldw, state) = regs;
            let addr = f.map_or(0, |f| f.addr);
            let st = f.map_or(0, |f| BB_VALID | if f.space == AddrSpace::Ppgtt { BB_PPGTT } else { 0 });
            core.write(base + udw, (addr >> 32) as u32);
            core.write(base + ldw, addr as u32);
            core.write(base + state, st);
        };
        put(self.core, (reg::BB_ADDR_UDW, reg::BB_ADDR, reg::BB_STATE), frames[1]);
        put(self.core, (reg::SBB_ADDR_UDW, reg::SBB_ADDR, reg::SBB_STATE), if level == 2 { frames[2] } else { None });
    }

    /// The batches a preempted context was running, from its restored BB/SBB registers (and
    /// those registers cleared: the engine is about to run them).
    pub fn saved_batches(&mut self) -> Option<([Option<Frame>; 3], usize)> {
        let base = self.core.base();
        let frame = |core: &EngineCore, regs: (u32, u32, u32), parent: bool| {
            let (udw, ldw, state) = regs;
            let st = core.read(base + state);
            (st & BB_VALID != 0).then(|| {
                let space = if st & BB_PPGTT != 0 { AddrSpace::Ppgtt } else { AddrSpace::Ggtt };
                let addr = u64::from(core.read(base + ldw)) | u64::from(core.read(base + udw)) << 32;
                Frame { space, addr, privileged: parent && space == AddrSpace::Ggtt }
            })
        };
        let l1 = frame(self.core, (reg::BB_ADDR_UDW, reg::BB_ADDR, reg::BB_STATE), true)?;
        let l2 = frame(self.core, (reg::SBB_ADDR_UDW, reg::SBB_ADDR, reg::SBB_STATE), l1.privileged);
        for r in [reg::BB_STATE, reg::SBB_STATE] {
            self.core.write(base + r, 0);
        }
        let level = if l2.is_some() { 2 } else { 1 };
        Some(([None, Some(l1), l2], level))
    }

    /// Charges engine time; past the timeout the workload is hung.
    /// A command that would run past the timeout is stopped there: the engine time charged never
    /// exceeds the timeout.
    pub fn charge(&mut self, ns: u64, what: &'static str) -> Result<(), Stop> {
        let limit = self.timeout_ns;
        let total = self.ns.saturating_add(ns);
        if total > limit {
            let used = limit.saturating_sub(self.ns);
            self.core.clock_ns = self.core.clock_ns.saturating_add(used);
            self.core.clock.store(self.core.clock_ns, std::sync::atomic::Ordering::Relaxed);
            self.ns = limit;
            return Err(Stop::Hang(what));
        }
        self.ns = total;
        self.core.clock_ns = self.core.clock_ns.saturating_add(ns);
        self.core.clock.store(self.core.clock_ns, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Charges the memory traffic of a command.
    pub fn charge_bytes(&mut self, bytes: u64) -> Result<(), Stop> {
        self.report.bytes_moved = self.report.bytes_moved.saturating_add(bytes);
        self.charge(self.cost.bytes_ns(bytes), "moving memory")
    }

    /// Fetches the command at `cur` into `self.buf`; returns its length in dwords.
    fn fetch(&mut self, view: &MemView<'_>, cur: Cursor) -> Result<u64, Stop> {
        let read_at = |off: u64, out: &mut [u8]| -> Result<(), MemFault> {
            match cur {
                Cursor::Linear { space, addr } => view.read(space, addr.wrapping_add(off), out),
                Cursor::Ring { start, size, off: o } => {
                    // Split at the end of the ring.
                    let pos = (o + off) % size;
                    let first = ((size - pos) as usize).min(out.len());
                    let (a, b) = out.split_at_mut(first);
                    view.read(AddrSpace::Ggtt, start + pos, a)?;
                    if !b.is_empty() {
                        view.read(AddrSpace::Ggtt, start, b)?;
                    }
                    Ok(())
                }
            }
        };
        let mut b = [0u8; 4];
        read_at(0, &mut b)?;
        let dw0 = u32::from_le_bytes(b);
        let (_, len) = self.table.decode_with_len(self.core.engine, dw0);
        let len = (len.max(1) as usize).min(MAX_CMD_DWORDS);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(len, 0);
        let r = read_at(0, zerocopy::IntoBytes::as_mut_bytes(buf.as_mut_slice()));
        for d in buf.iter_mut() {
            *d = u32::from_le(*d);
        }
        self.buf = buf;
        r?;
        Ok(len as u64)
    }

    /// Runs the ring the ring registers describe, from RING_HEAD to RING_TAIL. The registers are
    /// read before every command, as the command streamer's fetch does: a command that loads
    /// RING_HEAD, RING_TAIL, RING_START or RING_CTL moves the fetch.
    pub fn run_ring(&mut self) -> Result<(), Stop> {
        let base = self.core.base();
        loop {
            let start = u64::from(self.core.read(base + reg::RING_START) & !0xfff);
            let ctl = self.core.read(base + reg::RING_CTL);
            if ctl & 1 == 0 {
                return Err(Stop::Fault("the context's ring is not enabled".into()));
            }
            let size = (u64::from(ctl >> 12 & 0x1ff) + 1) * PAGE_SIZE;
            let head_reg = self.core.read(base + reg::RING_HEAD);
            let off = u64::from(head_reg & 0x1f_fffc) % size;
            let tail = u64::from(self.core.read(base + reg::RING_TAIL) & 0x1f_fff8) % size;
            if off == tail {
                return Ok(());
            }
            if self.preempt_here(Point::Ring) {
                return Err(Stop::Preempted);
            }
            self.at = start + off;
            self.privileged = true;
            let mut view = self.mem.view(self.ppgtt);
            let step = self.fetch(&view, Cursor::Ring { start, size, off }).and_then(|len| {
                let next = (off + 4 * len) % size;
                self.core.write(base + reg::RING_HEAD, (head_reg & !0x1f_fffc) | next as u32);
                self.execute(&mut view)
            });
            self.mem.finish(view);
            match step? {
                Flow::Next => {}
                Flow::End => return Err(Stop::Fault("MI_BATCH_BUFFER_END in the ring".into())),
                Flow::Start { addr, space, second } => {
                    let addr = self.target(addr, space)?;
                    let frame = Frame { space, addr, privileged: space == AddrSpace::Ggtt };
                    let _ = second;
                    self.run_batches([None, Some(frame), None], 1)?;
                }
                Flow::Preempt { again } => {
                    if again {
                        self.core.write(base + reg::RING_HEAD, head_reg);
                    }
                    return Err(Stop::Preempted);
                }
            }
        }
    }

    /// Engine clock ticks of this run so far.
    pub fn ns_ticks(&self) -> u32 {
        self.core.ticks(self.ns) as u32
    }

    /// Runs `len` bytes of commands at GGTT `addr` (the indirect-context batch); batch starts in
    /// it call batches that return here.
    pub fn run_buffer(&mut self, addr: u64, len: u64) -> Result<(), Stop> {
        let end = addr.saturating_add(len);
        let mut at = addr;
        while at < end {
            self.at = at;
            self.privileged = true;
            let mut view = self.mem.view(self.ppgtt);
            let step = self.fetch(&view, Cursor::Linear { space: AddrSpace::Ggtt, addr: at }).and_then(|n| {
                at = at.saturating_add(4 * n);
                self.execute(&mut view)
            });
            self.mem.finish(view);
            match step? {
                Flow::Next | Flow::Preempt { .. } => {}
                Flow::End => return Ok(()),
                Flow::Start { addr, space, .. } => {
                    let addr = self.target(addr, space)?;
                    let frame = Frame { space, addr, privileged: space == AddrSpace::Ggtt };
                    self.run_batches([None, Some(frame), None], 1)?;
                }
            }
        }
        Ok(())
    }

    /// Runs batches from `frames` (level 1, and level 2 if `level` is 2: a batch started from the
    /// ring or the indirect context, or a preempted context's saved batches) until level 1 ends.
    /// A batch is privileged if it was started in the GGTT from a privileged buffer. At a
    /// preemption point the positions are saved in the batch-state registers.
    pub fn run_batches(&mut self, mut frames: [Option<Frame>; 3], mut level: usize) -> Result<(), Stop> {
        let base = self.core.base();
        let mut boundary = true;
        loop {
            let Some(Some(frame)) = frames.get(level).copied() else {
                return Err(Stop::Fault("batch level".into()));
            };
            if self.preempt_here(if boundary { Point::Batch } else { Point::Command }) {
                self.save_batch_state(&frames, level);
                return Err(Stop::Preempted);
            }
            boundary = false;
            self.at = frame.addr;
            self.privileged = frame.privileged;
            let mut view = self.mem.view(self.ppgtt);
            let step = self.fetch(&view, Cursor::Linear { space: frame.space, addr: frame.addr }).and_then(|len| {
                if let Some(Some(f)) = frames.get_mut(level) {
                    f.addr = frame.addr.wrapping_add(4 * len);
                }
                self.execute(&mut view)
            });
            self.mem.finish(view);
            match step? {
                Flow::Next => {}
                Flow::End if level == 2 => {
                    level = 1;
                    boundary = true;
                }
                Flow::End => {
                    for r in [reg::BB_STATE, reg::SBB_STATE] {
                        self.core.write(base + r, 0);
                    }
                    return Ok(());
                }
                Flow::Start { addr, space, second } => {
                    let addr = self.target(addr, space)?;
                    let privileged = self.privileged && space == AddrSpace::Ggtt;
                    level = if second { 2 } else { 1 };
                    if let Some(f) = frames.get_mut(level) {
                        *f = Some(Frame { space, addr, privileged });
                    }
                    boundary = true;
                }
                Flow::Preempt { again } => {
                    if again {
                        if let Some(Some(f)) = frames.get_mut(level) {
                            f.addr = frame.addr;
                        }
                    }
                    self.save_batch_state(&frames, level);
                    return Err(Stop::Preempted);
                }
            }
        }
    }

    /// Executes a context image's register-load lists from dword `first` (the context restore),
    /// until MI_BATCH_BUFFER_END (returns true) or the end of `image` (false). Loads take effect
    /// as they execute.
    pub fn restore(&mut self, image: &[u32], first: usize) -> Result<bool, Stop> {
        let mut i = first;
        self.privileged = true;
        while let Some(&dw0) = image.get(i) {
            if dw0 == 0 {
                i += 1;
                continue;
            }
            let (d, len) = self.table.decode_with_len(self.core.engine, dw0);
            let len = len.max(1) as usize;
            match d {
                Decoded::Command(desc) if desc.handler == Handler::Lri => {
                    let mut j = i + 1;
                    while j + 1 < i + len {
                        if let (Some(&r), Some(&v)) = (image.get(j), image.get(j + 1)) {
                            self.load_reg(r, v);
                        }
                        j += 2;
                    }
                    self.charge(self.cost.mi_ns / 8 * (len as u64 / 2), "restoring the context")?;
                }
                Decoded::Command(desc) if desc.handler == Handler::BbEnd => return Ok(true),
                Decoded::Command(desc) => {
                    let cmd = image.get(i..(i + len).min(image.len())).unwrap_or_default();
                    self.charge(self.cost.modelled_ns(desc.name, cmd), "restoring the context")?;
                }
                _ => return Err(Stop::Fault(format!("context image dword {i}: command {dw0:#010x} not executable"))),
            }
            i += len;
        }
        Ok(false)
    }

    /// A register load by the command stream. A load of a page-directory pointer changes the
    /// tables the engine walks from the next access on.
    fn load_reg(&mut self, r: u32, v: u32) {
        let r = r & REG_MASK;
        self.core.stream_write(r, v);
        let pdps = self.core.base() + reg::PDP0_LDW;
        if (pdps..pdps + 32).contains(&r) {
            self.ppgtt = Some(self.core.root(self.legacy32));
        }
    }

    /// What a non-privileged batch may not execute: the command becomes MI_NOOP (a command
    /// privilege violation, counted), as the hardware does. `Some(reason)` if `cmd` is one.
    fn privilege_violation(&self, desc: &CmdDesc, cmd: &[u32]) -> Option<&'static str> {
        if self.privileged {
            return None;
        }
        let d = |i: usize| cmd.get(i).copied().unwrap_or(0);
        let ggtt22 = d(0) & (1 << 22) != 0;
        let writable = |r: u32| nonpriv_writable(self.core, r & REG_MASK);
        if nonpriv::PRIVILEGED_COMMANDS.contains(&desc.name) {
            return Some("privileged command");
        }
        match desc.handler {
            Handler::Lri => {
                let mut regs =
                    cmd.get(1..).unwrap_or_default().chunks_exact(2).map(|p| p.first().copied().unwrap_or(0));
                (!regs.all(writable)).then_some("register load")
            }
            Handler::Lrr => (!writable(d(2))).then_some("register load"),
            Handler::Lrm if ggtt22 => Some("global GTT access"),
            Handler::Lrm => (!writable(d(1))).then_some("register load"),
            Handler::Srm | Handler::StoreDataImm if ggtt22 => Some("global GTT access"),
            Handler::CopyMemMem if ggtt22 || d(0) & (1 << 21) != 0 => Some("global GTT access"),
            Handler::PipeControl if d(1) & (1 << 23) != 0 && !writable(d(2)) => Some("register load"),
            Handler::SemaphoreWait if d(0) & (1 << 16) != 0 && self.core.gen == Gen::Gen9 => Some("register poll"),
            _ => None,
        }
    }

    fn read_reg(&self, r: u32) -> u32 {
        let off = (r & REG_MASK).wrapping_sub(self.core.base());
        if off == reg::CTX_TIMESTAMP {
            return self.core.rel(reg::CTX_TIMESTAMP).wrapping_add(self.core.ticks(self.ns) as u32);
        }
        self.core.read(r)
    }

    /// Executes the command in `self.buf`.
    fn execute(&mut self, view: &mut MemView<'a>) -> Result<Flow, Stop> {
        self.aborted()?;
        if self.core.reset_requested() {
            return Err(Stop::Fault("the engine was reset through GDRST by a command stream".into()));
        }
        let cmd = std::mem::take(&mut self.buf);
        let r = self.execute_cmd(view, &cmd);
        self.buf = cmd;
        self.report.commands += 1;
        self.progress = true;
        self.pace(view);
        r
    }

    fn execute_cmd(&mut self, view: &mut MemView<'a>, cmd: &[u32]) -> Result<Flow, Stop> {
        let d = |i: usize| cmd.get(i).copied().unwrap_or(0);
        let dw0 = d(0);
        if dw0 == 0 {
            self.charge(self.cost.noop_ns, "MI_NOOP")?;
            return Ok(Flow::Next);
        }
        let desc: &CmdDesc = match self.table.decode(self.core.engine, dw0) {
            Decoded::Command(desc) => desc,
            _ => return Err(Stop::Fault(format!("command {dw0:#010x} is not executable on {}", self.core.engine))),
        };
        let mi = self.cost.mi_ns;
        if self.privilege_violation(desc, cmd).is_some() {
            self.report.privilege_violations += 1;
            self.charge(mi, "a command privilege violation")?;
            return Ok(Flow::Next);
        }
        // A non-privileged batch's other global-GTT selections are taken in the PPGTT, and so is
        // a batch it starts.
        let ggtt22 = dw0 & (1 << 22) != 0 && self.privileged;
        match desc.handler {
            Handler::UserInterrupt => {
                self.report.interrupts += 1;
                self.charge(mi, "MI_USER_INTERRUPT")?;
            }
            Handler::WaitForEvent | Handler::ReportHead | Handler::ReportPerfCount | Handler::UrbMem => {
                self.charge(mi, desc.name)?;
            }
            Handler::BbStart => {
                self.charge(mi, "MI_BATCH_BUFFER_START")?;
                let ppgtt = dw0 & (1 << 8) != 0 || !self.privileged;
                let space = if ppgtt { AddrSpace::Ppgtt } else { AddrSpace::Ggtt };
                let mut addr = addr64(d(1), d(2));
                if self.core.gen == Gen::Gen9 && dw0 & (1 << 16) != 0 {
                    // Add Offset Enable: the engine adds BB_OFFSET.
                    addr = addr.wrapping_add(u64::from(self.core.rel(reg::BB_OFFSET)));
                }
                return Ok(Flow::Start { addr, space, second: dw0 & (1 << 22) != 0 });
            }
            Handler::BbEnd => {
                self.charge(mi, "MI_BATCH_BUFFER_END")?;
                return Ok(Flow::End);
            }
            Handler::CondBbEnd => {
                self.charge(mi, "MI_CONDITIONAL_BATCH_BUFFER_END")?;
                let (space, addr) = (space_of(ggtt22), addr64(d(2), d(3)));
                let mut value = view.read_u32(space, addr)?;
                if dw0 & (1 << 19) != 0 {
                    value &= view.read_u32(space, addr + 4)?;
                }
                if value <= d(1) {
                    return Ok(Flow::End);
                }
            }
            Handler::Lri => {
                let mut i = 1;
                while let (Some(&r), Some(&v)) = (cmd.get(i), cmd.get(i + 1)) {
                    self.load_reg(r, v);
                    i += 2;
                }
                self.charge(mi + mi / 4 * (cmd.len() as u64 / 2), "MI_LOAD_REGISTER_IMM")?;
            }
            Handler::Lrr => {
                let v = self.read_reg(d(1));
                self.load_reg(d(2), v);
                self.charge(mi, "MI_LOAD_REGISTER_REG")?;
            }
            Handler::Lrm => {
                let v = view.read_u32(space_of(ggtt22), addr64(d(2), d(3)))?;
                self.load_reg(d(1), v);
                self.charge(mi, "MI_LOAD_REGISTER_MEM")?;
                self.charge_bytes(4)?;
            }
            Handler::Srm => {
                let v = self.read_reg(d(1));
                view.write_u32(space_of(ggtt22), addr64(d(2), d(3)), v)?;
                self.charge(mi, "MI_STORE_REGISTER_MEM")?;
                self.charge_bytes(4)?;
            }
            Handler::StoreDataImm => {
                let (space, addr) = (space_of(ggtt22), addr64(d(1), d(2)));
                let data = cmd.get(3..).unwrap_or_default();
                for (i, v) in data.iter().enumerate() {
                    view.write_u32(space, addr + 4 * i as u64, *v)?;
                }
                self.charge(mi, "MI_STORE_DATA_IMM")?;
                self.charge_bytes(4 * data.len() as u64)?;
            }
            Handler::RsStoreDataImm => self.charge(mi, desc.name)?,
            _ if desc.name == "MI_STORE_DATA_INDEX" => {
                let base = if dw0 & (1 << 21) != 0 { self.pphwsp } else { u64::from(self.core.rel(reg::HWS_PGA)) };
                let at = (base & !0xfff) + u64::from(d(1) & 0xffc);
                let data = cmd.get(2..).unwrap_or_default();
                for (i, v) in data.iter().enumerate() {
                    view.write_u32(AddrSpace::Ggtt, at + 4 * i as u64, *v)?;
                }
                self.charge(mi, "MI_STORE_DATA_INDEX")?;
            }
            Handler::FlushDw => {
                self.charge(mi, "MI_FLUSH_DW")?;
                if dw0 & (1 << 8) != 0 {
                    self.report.interrupts += 1;
                }
                let post = (dw0 >> 14) & 3;
                let qword = cmd.len() >= 5;
                let (space, addr) = (space_of(d(1) & 4 != 0 && self.privileged), addr64(d(1) & !7, d(2)));
                let imm = u64::from(d(3)) | u64::from(d(4)) << 32;
                self.post_sync(view, post, space, addr, imm, qword)?;
            }
            Handler::PipeControl => {
                self.charge(mi, "PIPE_CONTROL")?;
                let dw1 = d(1);
                if dw1 & (1 << 8) != 0 {
                    self.report.interrupts += 1;
                }
                if dw1 & (1 << 23) != 0 {
                    // LRI post-sync: the address dword names a register that receives the data.
                    // A post-sync operation set beside it is done too (the hardware's behaviour
                    // for that combination is not documented; doing both hides nothing).
                    self.load_reg(d(2), d(4));
                }
                let post = (dw1 >> 14) & 3;
                let (space, addr) = (space_of(dw1 & (1 << 24) != 0 && self.privileged), addr64(d(2), d(3)));
                let imm = u64::from(d(4)) | u64::from(d(5)) << 32;
                self.post_sync(view, post, space, addr, imm, true)?;
            }
            Handler::SemaphoreWait => return self.semaphore_wait(view, cmd),
            Handler::Atomic => self.atomic(view, cmd)?,
            Handler::CopyMemMem => {
                let src = view.read_u32(space_of(ggtt22), addr64(d(3), d(4)))?;
                view.write_u32(space_of(dw0 & (1 << 21) != 0), addr64(d(1), d(2)), src)?;
                self.charge(mi, "MI_COPY_MEM_MEM")?;
                self.charge_bytes(8)?;
            }
            Handler::Blit(kind) => self.blit(view, kind, cmd)?,
            Handler::Generic if desc.name == "MI_MATH" => self.math(cmd.get(1..).unwrap_or_default())?,
            Handler::Generic if desc.name == "MI_ARB_ON_OFF" => {
                self.arbitration = dw0 & 1 != 0;
                self.charge(mi, "MI_ARB_ON_OFF")?;
            }
            Handler::Generic if desc.name == "MI_ARB_CHECK" => {
                self.charge(mi, "MI_ARB_CHECK")?;
                if self.arbitration && self.preemptible && self.preempt.is_some_and(|stop| stop(self.ns)) {
                    return Ok(Flow::Preempt { again: false });
                }
            }
            Handler::Generic => {
                let ns = self.cost.modelled_ns(desc.name, cmd);
                self.charge(ns, "modelled command")?;
            }
            Handler::Reject(_) => return Err(Stop::Fault(format!("{} is not modelled", desc.name))),
        }
        Ok(Flow::Next)
    }

    /// The post-sync write of MI_FLUSH_DW / PIPE_CONTROL: 1 immediate, 2 depth count, 3 timestamp.
    fn post_sync(
        &mut self,
        view: &mut MemView<'a>,
        post: u32,
        space: AddrSpace,
        addr: u64,
        imm: u64,
        qword: bool,
    ) -> Result<(), Stop> {
        let value = match post {
            0 => return Ok(()),
            1 => imm,
            2 => 0, // no pixels were drawn by this model
            _ => self.core.ticks(self.core.clock_ns),
        };
        if qword || post != 1 {
            view.write_u64(space, addr, value)?;
            self.charge_bytes(8)
        } else {
            view.write_u32(space, addr, value as u32)?;
            self.charge_bytes(4)
        }
    }

    fn semaphore_wait(&mut self, view: &mut MemView<'a>, cmd: &[u32]) -> Result<Flow, Stop> {
        let d = |i: usize| cmd.get(i).copied().unwrap_or(0);
        let (space, addr, sdd) = (space_of(d(0) & (1 << 22) != 0 && self.privileged), addr64(d(2), d(3)), d(1));
        // Gen9 register poll mode: the address dword names a register, no memory is read.
        let poll_reg = (self.core.gen == Gen::Gen9 && d(0) & (1 << 16) != 0).then_some(d(2) & REG_MASK);
        let op = (d(0) >> 12) & 7;
        self.charge(self.cost.mi_ns, "MI_SEMAPHORE_WAIT")?;
        loop {
            let sad = match poll_reg {
                Some(r) => self.read_reg(r),
                None => view.read_u32(space, addr)?,
            };
            let met = match op {
                0 => sad > sdd,
                1 => sad >= sdd,
                2 => sad < sdd,
                3 => sad <= sdd,
                4 => sad == sdd,
                5 => sad != sdd,
                _ => return Err(Stop::Fault(format!("MI_SEMAPHORE_WAIT compare operation {op} is reserved"))),
            };
            if met {
                return Ok(Flow::Next);
            }
            // A wait is a preemption point: the command runs again when the context resumes.
            if self.arbitration && self.preemptible && self.preempt.is_some_and(|stop| stop(self.ns)) {
                return Ok(Flow::Preempt { again: true });
            }
            // Another engine or the CPU may signal: let them run between polls.
            self.aborted()?;
            self.charge(self.cost.semaphore_poll_ns, "MI_SEMAPHORE_WAIT that is never signalled")?;
            self.mem.pause(view, std::thread::yield_now);
            self.pace(view);
        }
    }

    fn atomic(&mut self, view: &mut MemView<'a>, cmd: &[u32]) -> Result<(), Stop> {
        let d = |i: usize| cmd.get(i).copied().unwrap_or(0);
        let dw0 = d(0);
        let (space, addr) = (space_of(dw0 & (1 << 22) != 0 && self.privileged), addr64(d(1), d(2)));
        let op = (dw0 >> 8) & 0xff;
        let size = match op >> 4 {
            0 => 4usize,
            2 => 8,
            4 => 16,
            _ => return Err(Stop::Fault(format!("MI_ATOMIC opcode {op:#x} is reserved"))),
        };
        let mask = if size == 16 { u128::MAX } else { (1u128 << (8 * size)) - 1 };
        // Operands: inline (dwords 3.. alternate operand 1 and 2 per dword) or CS_GPR0 / CS_GPR1.
        let (op1, op2) = if dw0 & (1 << 18) != 0 {
            let mut a = 0u128;
            let mut b = 0u128;
            for k in 0..4u32 {
                a |= u128::from(d(3 + 2 * k as usize)) << (32 * k);
                b |= u128::from(d(4 + 2 * k as usize)) << (32 * k);
            }
            (a & mask, b & mask)
        } else {
            let g = |n| u128::from(self.core.gpr(n));
            ((g(0) | g(1) << 64) & mask, (g(2) | g(3) << 64) & mask)
        };
        let mut bytes = [0u8; 16];
        let cell = bytes.get_mut(..size).unwrap_or_default();
        view.read(space, addr, cell)?;
        let old = u128::from_le_bytes(bytes);
        let bit = (8 * size - 1) as u32;
        let signed = |v: u128| -> i128 { ((v << (127 - bit)) as i128) >> (127 - bit) };
        let new = match op & 0xf {
            0x1 => old & op1,
            0x2 => old | op1,
            0x3 => old ^ op1,
            0x4 => op1,
            0x5 => old.wrapping_add(1),
            0x6 | 0xf => old.wrapping_sub(1),
            0x7 => old.wrapping_add(op1),
            0x8 => old.wrapping_sub(op1),
            0x9 => op1.wrapping_sub(old),
            0xa => {
                if signed(op1) > signed(old) {
                    op1
                } else {
                    old
                }
            }
            0xb => {
                if signed(op1) < signed(old) {
                    op1
                } else {
                    old
                }
            }
            0xc => old.max(op1),
            0xd => old.min(op1),
            0xe => {
                if old == op1 {
                    op2
                } else {
                    old
                }
            }
            _ => return Err(Stop::Fault(format!("MI_ATOMIC opcode {op:#x} is reserved"))),
        } & mask;
        if size == 16 && op != 0x4e {
            return Err(Stop::Fault(format!("MI_ATOMIC opcode {op:#x} is reserved")));
        }
        let out = new.to_le_bytes();
        view.write(space, addr, out.get(..size).unwrap_or_default())?;
        if dw0 & (1 << 16) != 0 {
            // Return data: the value before the operation, in CS_GPR0 (and GPR1 for 16 bytes).
            self.core.set_gpr(0, old as u64);
            if size == 16 {
                self.core.set_gpr(1, (old >> 64) as u64);
            }
        }
        self.charge(self.cost.mi_ns, "MI_ATOMIC")?;
        self.charge_bytes(2 * size as u64)
    }

    fn math(&mut self, alu: &[u32]) -> Result<(), Stop> {
        const SRCA: u32 = 0x20;
        const SRCB: u32 = 0x21;
        const ACCU: u32 = 0x31;
        const ZF: u32 = 0x32;
        const CF: u32 = 0x33;
        let slot = |o: u32| match o {
            SRCA => Some(0),
            SRCB => Some(1),
            ACCU => Some(2),
            ZF => Some(3),
            CF => Some(4),
            _ => None,
        };
        for &ins in alu {
            let (opcode, op1, op2) = (ins >> 20, (ins >> 10) & 0x3ff, ins & 0x3ff);
            let get = |core: &EngineCore, o: u32| -> Result<u64, Stop> {
                match (o, slot(o)) {
                    (0..=15, _) => Ok(core.gpr(o)),
                    (_, Some(s)) => Ok(core.alu.get(s).copied().unwrap_or(0)),
                    _ => Err(Stop::Fault(format!("MI_MATH operand {o:#x} is reserved"))),
                }
            };
            let flag = |b: bool| if b { u64::MAX } else { 0 };
            let set_alu = |core: &mut EngineCore, s: usize, v: u64| {
                if let Some(a) = core.alu.get_mut(s) {
                    *a = v;
                }
            };
            let src_slot = |o: u32| match o {
                SRCA => Ok(0),
                SRCB => Ok(1),
                _ => Err(Stop::Fault(format!("MI_MATH load destination {o:#x} is not SRCA or SRCB"))),
            };
            match opcode {
                0x000 => {}
                0x080 | 0x480 => {
                    let v = get(self.core, op2)?;
                    let s = src_slot(op1)?;
                    set_alu(self.core, s, if opcode == 0x480 { !v } else { v });
                }
                0x081 | 0x481 => {
                    let s = src_slot(op1)?;
                    set_alu(self.core, s, if opcode == 0x481 { 1 } else { 0 });
                }
                0x100..=0x104 => {
                    let [a, b, ..] = self.core.alu;
                    let (r, carry) = match opcode {
                        0x100 => a.overflowing_add(b),
                        0x101 => a.overflowing_sub(b),
                        0x102 => (a & b, false),
                        0x103 => (a | b, false),
                        _ => (a ^ b, false),
                    };
                    set_alu(self.core, 2, r);
                    set_alu(self.core, 3, flag(r == 0));
                    set_alu(self.core, 4, flag(carry));
                }
                0x180 | 0x580 => {
                    let v = get(self.core, op2)?;
                    let v = if opcode == 0x580 { !v } else { v };
                    match (op1, slot(op1)) {
                        (0..=15, _) => self.core.set_gpr(op1, v),
                        (_, Some(s)) => set_alu(self.core, s, v),
                        _ => return Err(Stop::Fault(format!("MI_MATH store destination {op1:#x} is reserved"))),
                    }
                }
                _ => return Err(Stop::Fault(format!("MI_MATH ALU opcode {opcode:#x} is reserved"))),
            }
        }
        self.charge(self.cost.mi_ns + alu.len() as u64, "MI_MATH")
    }
}
