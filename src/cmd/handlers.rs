//! Per-command semantics: the address audit, the register audit, batch starts, interrupt
//! requests and the rewrites the scanner makes in the shadow copy.

use vm_memory::GuestMemory;

use super::error::{BufferKind, Reason};
use super::memory::{AddrSpace, GmTranslate};
use super::regs::{self, RegAccess, RegPolicy, REG_OFFSET_MASK};
use super::scan::{BufCtx, Flow, ScanObserver, Scanner};
use super::table::{BlitKind, CmdDesc, Handler};
use super::workload::{Events, FetchPoint, Reloc, RootLoad};
use crate::hw::{lrc, nonpriv, Gen};

const MI_BATCH_BUFFER_START_PPGTT: u32 = 1 << 8;
const MI_BATCH_BUFFER_START_2ND_LEVEL: u32 = 1 << 22;
const MI_BATCH_BUFFER_START_PREDICATED: u32 = 1 << 15;
/// Gen9: the target is the address plus BB_OFFSET.
const MI_BATCH_BUFFER_START_ADD_OFFSET: u32 = 1 << 16;
const MI_BATCH_BUFFER_START_RESOURCE_STREAMER: u32 = 1 << 10;
const MI_USE_GGTT: u32 = 1 << 22;
const NOTIFY: u32 = 1 << 8;
const PC_GGTT: u32 = 1 << 24;
const PC_LRI_POST_SYNC: u32 = 1 << 23;
const PC_STORE_INDEX: u32 = 1 << 21;
const FLUSH_DW_STORE_INDEX: u32 = 1 << 21;
const FLUSH_DW_GGTT: u32 = 1 << 2;

/// Dword `i` of a command whose length was already checked; 0 if absent.
#[inline]
fn dw(cmd: &[u32], i: usize) -> u32 {
    cmd.get(i).copied().unwrap_or(0)
}

/// The 64-bit address in dwords `i` and `i + 1`, with the low `low_bits` bits (flags) cleared.
#[inline]
fn addr(cmd: &[u32], i: usize, low_bits: u32) -> u64 {
    let lo = u64::from(dw(cmd, i) & !((1u32 << low_bits) - 1));
    lo | u64::from(dw(cmd, i + 1)) << 32
}

fn set_addr(cmd: &mut [u32], i: usize, value: u64, keep_low: u32) {
    if let Some(lo) = cmd.get_mut(i) {
        *lo = (value as u32 & !keep_low) | (*lo & keep_low);
    }
    if let Some(hi) = cmd.get_mut(i + 1) {
        *hi = (value >> 32) as u32;
    }
}

fn need_len(cmd: &[u32], ok: bool, expected: &'static str) -> Result<(), Reason> {
    if ok {
        Ok(())
    } else {
        Err(Reason::BadLength { len: cmd.len() as u32, expected })
    }
}

/// Removes the register/value pairs of an MI_LOAD_REGISTER_IMM copy whose bit is set in `dropped`
/// (bit `n` for pair `n`): each becomes a repeat of a kept pair (the same register loaded with the
/// same value again), or, if none is kept, the whole command becomes MI_NOOPs.
fn drop_pairs(cmd: &mut [u32], dropped: u128) {
    let pairs = (cmd.len().saturating_sub(1) / 2).min(128);
    let kept = (0..pairs).find(|n| dropped & (1 << n) == 0);
    match kept {
        None => cmd.fill(0),
        Some(n) => {
            let (reg, value) = (dw(cmd, 1 + 2 * n), dw(cmd, 2 + 2 * n));
            for m in (0..pairs).filter(|m| dropped & (1 << m) != 0) {
                if let Some(pair) = cmd.get_mut(1 + 2 * m..3 + 2 * m) {
                    pair.copy_from_slice(&[reg, value]);
                }
            }
        }
    }
}

/// Whether a 64-bit PPGTT address is canonical (bits 63:48 copy bit 47), or carries no upper bits
/// at all as Gen8 drivers may write it.
fn canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == 0x1_ffff || a >> 48 == 0
}

impl<M, T, O> Scanner<'_, M, T, O>
where
    M: GuestMemory + ?Sized,
    T: GmTranslate + ?Sized,
    O: ScanObserver + ?Sized,
{
    /// Audits a memory access: GGTT accesses must fall inside one of the vGPU's windows.
    /// PPGTT accesses are bounded by the shadow PPGTT, which maps only the guest's own memory.
    fn access(&self, space: AddrSpace, what: &'static str, addr: u64, size: u64) -> Result<(), Reason> {
        match space {
            AddrSpace::Ggtt if !self.p.windows.contains(addr, size) => {
                Err(Reason::AddressOutsideWindows { what, addr, size })
            }
            _ => Ok(()),
        }
    }

    /// The space an MI command with a "Use Global GTT" bit addresses.
    fn mi_space(&self, ggtt: bool) -> AddrSpace {
        if ggtt {
            AddrSpace::Ggtt
        } else {
            self.p.surfaces
        }
    }

    fn register(&self, reg: u32, access: RegAccess) -> Result<RegPolicy, Reason> {
        let policy = regs::policy(self.p.gen, self.p.engine, reg);
        if policy.allows(access) {
            Ok(policy)
        } else {
            Err(Reason::RegisterNotAllowed { reg, access })
        }
    }

    /// Register accesses of a non-privileged batch (one started in the PPGTT): whether each of
    /// `accesses` is one the hardware lets such a batch make. If one is not, the access is
    /// recorded as dropped and `false` returned: the caller turns the command into what the
    /// hardware makes of it (MI_NOOP) instead of refusing the workload. Always `true` for
    /// privileged buffers, whose accesses [`Self::register`] audits strictly.
    fn user_registers(&mut self, ctx: BufCtx, accesses: impl IntoIterator<Item = (u32, RegAccess)>) -> bool {
        if ctx.space() != AddrSpace::Ppgtt {
            return true;
        }
        let (gen, engine) = (self.p.gen, self.p.engine);
        let mut allowed = true;
        for (reg, access) in accesses {
            if !regs::user_allows(gen, engine, reg, access) {
                self.out.drop_access(reg, access);
                allowed = false;
            }
        }
        allowed
    }

    /// Makes the command MI_NOOP in the copy (a non-privileged access the hardware drops).
    fn noop(&mut self, cmd: &mut [u32]) -> Result<Flow, Reason> {
        cmd.fill(0);
        self.patched();
        Ok(Flow::Next)
    }

    /// Whether the hardware refuses `cmd` as a whole from a non-privileged batch (a command
    /// privilege violation: a privileged MI command, a global-GTT access by MI_STORE_DATA_IMM,
    /// MI_LOAD/STORE_REGISTER_MEM or MI_COPY_MEM_MEM, a register poll), as `hw::nonpriv` and the
    /// software GPU model it. Register accesses are [`Self::user_registers`]' business.
    fn privilege_violation(&self, desc: &CmdDesc, cmd: &[u32]) -> bool {
        let ggtt22 = dw(cmd, 0) & MI_USE_GGTT != 0;
        match desc.handler {
            Handler::Reject(_) => true,
            Handler::Generic => dw(cmd, 0) >> 29 == 0 && nonpriv::PRIVILEGED_COMMANDS.contains(&desc.name),
            Handler::Lrm | Handler::Srm | Handler::StoreDataImm => ggtt22,
            Handler::CopyMemMem => ggtt22 || dw(cmd, 0) & (1 << 21) != 0,
            Handler::SemaphoreWait => self.p.gen == Gen::Gen9 && dw(cmd, 0) & (1 << 16) != 0,
            _ => false,
        }
    }

    /// A non-privileged batch's other global-GTT selections (MI_SEMAPHORE_WAIT, MI_ATOMIC and
    /// MI_CONDITIONAL_BATCH_BUFFER_END, PIPE_CONTROL and MI_FLUSH_DW post-syncs) are taken in the
    /// PPGTT ("ignored and treated as if clear"); the copy runs privileged, so the copy clears them.
    fn user_ggtt_selections(&mut self, desc: &CmdDesc, cmd: &mut [u32]) {
        let (i, bit) = match desc.handler {
            Handler::SemaphoreWait | Handler::Atomic | Handler::CondBbEnd => (0, MI_USE_GGTT),
            Handler::PipeControl if dw(cmd, 1) & PC_STORE_INDEX == 0 => (1, PC_GGTT),
            Handler::FlushDw if dw(cmd, 0) & FLUSH_DW_STORE_INDEX == 0 => (1, FLUSH_DW_GGTT),
            _ => return,
        };
        if let Some(d) = cmd.get_mut(i).filter(|d| **d & bit != 0) {
            *d &= !bit;
            self.patched();
        }
    }

    fn patched(&mut self) {
        self.out.stats.patched += 1;
    }

    /// Runs the handler of `desc` over the shadow copy `cmd` (exactly the command's length).
    pub(super) fn handle(&mut self, desc: &'static CmdDesc, cmd: &mut [u32], ctx: BufCtx) -> Result<Flow, Reason> {
        if ctx.space() == AddrSpace::Ppgtt && self.privilege_violation(desc, cmd) {
            // What the hardware does with it in a non-privileged batch: a non-fatal command
            // privilege violation, the command replaced by MI_NOOP.
            self.out.stats.dropped_commands = self.out.stats.dropped_commands.saturating_add(1);
            return self.noop(cmd);
        }
        if ctx.space() == AddrSpace::Ppgtt {
            self.user_ggtt_selections(desc, cmd);
        }
        let dw0 = dw(cmd, 0);
        match desc.handler {
            Handler::Generic => {
                if self.p.surfaces == AddrSpace::Ggtt {
                    self.generic_addresses(desc, cmd)?;
                }
                Ok(Flow::Next)
            }
            Handler::UserInterrupt => {
                self.out.events |= Events::USER_INTERRUPT;
                cmd.fill(0);
                self.patched();
                Ok(Flow::Next)
            }
            Handler::WaitForEvent | Handler::ReportHead => {
                cmd.fill(0);
                self.patched();
                Ok(Flow::Next)
            }
            Handler::BbEnd if ctx.kind == BufferKind::Context => Ok(Flow::End),
            Handler::BbStart if ctx.kind == BufferKind::Context => {
                Err(Reason::Nesting("batch buffer start in a context image"))
            }
            Handler::BbEnd => match ctx.level() {
                0 => Err(Reason::Nesting("MI_BATCH_BUFFER_END in the ring")),
                _ => Ok(Flow::End),
            },
            Handler::BbStart => self.bb_start(cmd, ctx),
            Handler::CondBbEnd => {
                need_len(cmd, cmd.len() == 3 || cmd.len() == 4, "3 or 4")?;
                let a = if cmd.len() == 4 { addr(cmd, 2, 3) } else { u64::from(dw(cmd, 2) & !7) };
                self.access(self.mi_space(dw0 & MI_USE_GGTT != 0), "compare address", a, 8)?;
                Ok(Flow::Next)
            }
            Handler::Lri => self.lri(cmd, ctx),
            Handler::Lrm => {
                need_len(cmd, cmd.len() == 4, "4")?;
                let reg = dw(cmd, 1) & REG_OFFSET_MASK;
                if !self.user_registers(ctx, [(reg, RegAccess::Write)]) {
                    return self.noop(cmd);
                }
                self.register(reg, RegAccess::Write)?;
                self.access(self.mi_space(dw0 & MI_USE_GGTT != 0), "source", addr(cmd, 2, 2), 4)?;
                Ok(Flow::Next)
            }
            Handler::Srm => {
                need_len(cmd, cmd.len() == 4, "4")?;
                let reg = dw(cmd, 1) & REG_OFFSET_MASK;
                if !self.user_registers(ctx, [(reg, RegAccess::Read)]) {
                    return self.noop(cmd);
                }
                self.register(reg, RegAccess::Read)?;
                self.access(self.mi_space(dw0 & MI_USE_GGTT != 0), "destination", addr(cmd, 2, 2), 4)?;
                Ok(Flow::Next)
            }
            Handler::Lrr => {
                need_len(cmd, cmd.len() == 3, "3")?;
                let (src, dst) = (dw(cmd, 1) & REG_OFFSET_MASK, dw(cmd, 2) & REG_OFFSET_MASK);
                if !self.user_registers(ctx, [(src, RegAccess::Read), (dst, RegAccess::Write)]) {
                    return self.noop(cmd);
                }
                self.register(src, RegAccess::Read)?;
                self.register(dst, RegAccess::Write)?;
                Ok(Flow::Next)
            }
            Handler::StoreDataImm => {
                need_len(cmd, cmd.len() >= 4, "at least 4")?;
                let size = (cmd.len() as u64 - 3) * 4;
                self.access(self.mi_space(dw0 & MI_USE_GGTT != 0), "store address", addr(cmd, 1, 2), size)?;
                Ok(Flow::Next)
            }
            Handler::FlushDw => self.flush_dw(cmd),
            Handler::PipeControl => self.pipe_control(cmd, ctx),
            Handler::Atomic => {
                let inline = dw0 & (1 << 18) != 0;
                need_len(cmd, cmd.len() == if inline { 11 } else { 3 }, "3, or 11 with inline data")?;
                let size = match (dw0 >> 19) & 3 {
                    0 => 4,
                    1 => 8,
                    2 => 16,
                    _ => return Err(Reason::BadLength { len: cmd.len() as u32, expected: "a valid data size" }),
                };
                // The operation's own size (opcode bits 7:4: dword, qword, octword ops) may differ
                // from the Data Size field: the access covers the larger.
                let size = match (dw0 >> 12) & 0xf {
                    2 => size.max(8),
                    4 => size.max(16),
                    _ => size,
                };
                self.access(self.mi_space(dw0 & MI_USE_GGTT != 0), "atomic address", addr(cmd, 1, 2), size)?;
                Ok(Flow::Next)
            }
            Handler::SemaphoreWait => {
                need_len(cmd, cmd.len() == 4, "4")?;
                if self.p.gen == Gen::Gen9 && dw0 & (1 << 16) != 0 {
                    // Register poll mode: the address dword names a register.
                    self.register(dw(cmd, 2) & REG_OFFSET_MASK, RegAccess::Read)?;
                } else {
                    self.access(self.mi_space(dw0 & MI_USE_GGTT != 0), "semaphore address", addr(cmd, 2, 2), 4)?;
                }
                Ok(Flow::Next)
            }
            Handler::CopyMemMem => {
                need_len(cmd, cmd.len() == 5, "5")?;
                self.access(self.mi_space(dw0 & (1 << 21) != 0), "destination", addr(cmd, 1, 2), 4)?;
                self.access(self.mi_space(dw0 & (1 << 22) != 0), "source", addr(cmd, 3, 2), 4)?;
                Ok(Flow::Next)
            }
            Handler::ReportPerfCount => {
                need_len(cmd, cmd.len() == 4, "4")?;
                self.access(self.mi_space(dw(cmd, 1) & 1 != 0), "report address", addr(cmd, 1, 6), 256)?;
                Ok(Flow::Next)
            }
            Handler::UrbMem => {
                need_len(cmd, cmd.len() == 4, "4")?;
                self.access(self.p.surfaces, "memory address", addr(cmd, 2, 6), 64)?;
                Ok(Flow::Next)
            }
            Handler::RsStoreDataImm => {
                need_len(cmd, cmd.len() == 4, "4")?;
                self.access(self.p.surfaces, "destination", addr(cmd, 1, 2), 4)?;
                Ok(Flow::Next)
            }
            Handler::Blit(kind) => {
                if self.p.surfaces == AddrSpace::Ggtt {
                    self.blit(kind, cmd)?;
                }
                Ok(Flow::Next)
            }
            Handler::Reject(r) => Err(Reason::Privileged(r.reason())),
        }
    }

    fn generic_addresses(&self, desc: &'static CmdDesc, cmd: &[u32]) -> Result<(), Reason> {
        for f in desc.addrs {
            for i in 0..f.elements(cmd.len()) {
                match f.read(cmd, i) {
                    // A null address is the "not used" encoding; the hardware does not access it.
                    Some(0) | None => {}
                    Some(a) => self.access(AddrSpace::Ggtt, f.name, a, 1)?,
                }
            }
        }
        Ok(())
    }

    fn bb_start(&mut self, cmd: &mut [u32], ctx: BufCtx) -> Result<Flow, Reason> {
        let dw0 = dw(cmd, 0);
        need_len(cmd, cmd.len() == 3, "3")?;
        if self.p.gen == Gen::Gen9 && dw0 & MI_BATCH_BUFFER_START_ADD_OFFSET != 0 {
            // The engine adds BB_OFFSET, a register the guest sets, to the target: the batch it
            // would start is not known when the batch is copied and scanned.
            return Err(Reason::Undefined("MI_BATCH_BUFFER_START with Add Offset Enable"));
        }
        if dw0 & MI_BATCH_BUFFER_START_RESOURCE_STREAMER != 0 {
            return Err(Reason::Undefined("MI_BATCH_BUFFER_START with Resource Streamer Enable"));
        }
        // A non-privileged batch's batch starts are all taken in the PPGTT, as the hardware takes
        // its other global-GTT selections.
        let ppgtt = dw0 & MI_BATCH_BUFFER_START_PPGTT != 0 || ctx.space() == AddrSpace::Ppgtt;
        let space = if ppgtt { AddrSpace::Ppgtt } else { AddrSpace::Ggtt };
        let second = dw0 & MI_BATCH_BUFFER_START_2ND_LEVEL != 0;
        let mut target = addr(cmd, 1, 2);
        if self.p.gen == Gen::Gen8 {
            target &= (1 << 48) - 1;
        }
        match space {
            AddrSpace::Ppgtt => {
                if !canonical(target) {
                    return Err(Reason::NonCanonical(target));
                }
                target &= (1 << 48) - 1;
            }
            AddrSpace::Ggtt => self.access(AddrSpace::Ggtt, "batch buffer", target, 4)?,
        }
        let (level, flow) = match (ctx.level(), second) {
            (0, false) => (1, Flow::Next),
            (0, true) => return Err(Reason::Nesting("second-level batch started from the ring")),
            (1, true) => (2, Flow::Next),
            (2, true) => return Err(Reason::Nesting("second-level batch started from a second-level batch")),
            // Chaining: the current buffer ends here, unless predication may skip the jump.
            (l, _) if dw0 & MI_BATCH_BUFFER_START_PREDICATED != 0 => (l, Flow::Next),
            (l, _) => (l, Flow::End),
        };
        // Fetched when the engine gets there: every batch the ring starts, and a chain back into a
        // batch this scan copied (a loop), whose next pass must see memory as it is then.
        if self.defer && (ctx.level() == 0 || (!second && self.copied(space, target, level))) {
            self.out.fetches.push(FetchPoint { buffer: ctx.id, dword: ctx.dword, space, gma: target, level });
            return Ok(flow);
        }
        let target = self.batch(space, target, level)?;
        self.out.relocs.push(Reloc { buffer: ctx.id, dword: ctx.dword, target });
        Ok(flow)
    }

    fn lri(&mut self, cmd: &mut [u32], ctx: BufCtx) -> Result<Flow, Reason> {
        need_len(cmd, cmd.len() >= 3 && cmd.len() % 2 == 1, "1 + 2n with n >= 1")?;
        // A non-privileged batch's load of a register it may not write makes the whole command
        // MI_NOOP, as the hardware does ("will convert this command to a NOOP").
        let pairs = cmd.get(1..).unwrap_or_default().chunks_exact(2);
        if !self.user_registers(ctx, pairs.map(|p| (dw(p, 0) & REG_OFFSET_MASK, RegAccess::Write))) {
            return self.noop(cmd);
        }
        // Register/value pairs the copy drops (host-owned registers i915 writes).
        let mut dropped: u128 = 0;
        let mut k = 1;
        while k + 1 < cmd.len() {
            let bit = 1u128
                .checked_shl((k / 2) as u32)
                .ok_or(Reason::BadLength { len: cmd.len() as u32, expected: "at most 128 registers" })?;
            let reg = dw(cmd, k) & REG_OFFSET_MASK;
            let value = dw(cmd, k + 1);
            if ctx.kind == BufferKind::Context && lrc::ring_context_only(self.p.gen, self.p.engine, reg) {
                // The ring context is the host's (ring, where a preempted run resumes, roots).
                return Err(Reason::RingContextRegister(reg));
            }
            match self.register(reg, RegAccess::Write) {
                Ok(_) => {}
                Err(e) => match regs::policy(self.p.gen, self.p.engine, reg) {
                    RegPolicy::ForceNonpriv if regs::nonpriv_value_allowed(self.p.engine, value) => {}
                    RegPolicy::ForceNonpriv => return Err(Reason::NonprivValue { reg, value }),
                    RegPolicy::PageTableRoot => self.out.root_loads.push(RootLoad {
                        buffer: ctx.id,
                        cmd: ctx.dword,
                        dword: ctx.dword + k + 1,
                        reg,
                    }),
                    // A context image restores context-saved state the command streams may only read.
                    RegPolicy::ReadOnly if ctx.kind == BufferKind::Context => {}
                    RegPolicy::Discard => dropped |= bit,
                    _ => return Err(e),
                },
            }
            k += 2;
        }
        if dropped != 0 {
            drop_pairs(cmd, dropped);
            self.patched();
        }
        Ok(Flow::Next)
    }

    /// Redirects an index-mode post-sync write (an offset into "the" status page) to the guest's
    /// own status page; returns the absolute GGTT address.
    fn hwsp_index(&self, offset: u64) -> Result<u64, Reason> {
        let base = self.p.hwsp.ok_or(Reason::HwspIndex(offset))?;
        if offset >= 4096 {
            return Err(Reason::HwspIndex(offset));
        }
        let a = base.checked_add(offset).ok_or(Reason::HwspIndex(offset))?;
        self.access(AddrSpace::Ggtt, "status page", a, 8)?;
        Ok(a)
    }

    fn flush_dw(&mut self, cmd: &mut [u32]) -> Result<Flow, Reason> {
        need_len(cmd, cmd.len() == 4 || cmd.len() == 5, "4 or 5")?;
        let dw0 = dw(cmd, 0);
        if dw0 & NOTIFY != 0 {
            self.out.events |= Events::FLUSH_DW_NOTIFY;
            if let Some(d) = cmd.first_mut() {
                *d &= !NOTIFY;
            }
            self.patched();
        }
        if (dw0 >> 14) & 3 != 0 {
            if dw0 & FLUSH_DW_STORE_INDEX != 0 {
                let a = self.hwsp_index(u64::from(dw(cmd, 1) & !7))?;
                set_addr(cmd, 1, a, 7);
                if let Some(d) = cmd.get_mut(1) {
                    *d |= FLUSH_DW_GGTT;
                }
                if let Some(d) = cmd.first_mut() {
                    *d &= !FLUSH_DW_STORE_INDEX;
                }
                self.patched();
            } else {
                let space = self.mi_space(dw(cmd, 1) & FLUSH_DW_GGTT != 0);
                self.access(space, "post-sync address", addr(cmd, 1, 3), 8)?;
            }
        }
        Ok(Flow::Next)
    }

    fn pipe_control(&mut self, cmd: &mut [u32], ctx: BufCtx) -> Result<Flow, Reason> {
        need_len(cmd, cmd.len() >= 5, "at least 5")?;
        let dw1 = dw(cmd, 1);
        if dw1 & NOTIFY != 0 {
            self.out.events |= Events::PIPE_CONTROL_NOTIFY;
            if let Some(d) = cmd.get_mut(1) {
                *d &= !NOTIFY;
            }
            self.patched();
        }
        if dw1 & PC_LRI_POST_SYNC != 0 {
            // The address dword names a register that receives the immediate data; the PRM
            // requires the memory post-sync operation to be "no write" then.
            if (dw1 >> 14) & 3 != 0 {
                return Err(Reason::Undefined("PIPE_CONTROL with both a register and a memory post-sync write"));
            }
            if !self.user_registers(ctx, [(dw(cmd, 2) & REG_OFFSET_MASK, RegAccess::Write)]) {
                return self.noop(cmd);
            }
            self.register(dw(cmd, 2) & REG_OFFSET_MASK, RegAccess::Write)?;
            return Ok(Flow::Next);
        }
        if (dw1 >> 14) & 3 != 0 {
            if dw1 & PC_STORE_INDEX != 0 {
                let a = self.hwsp_index(u64::from(dw(cmd, 2) & !7))?;
                set_addr(cmd, 2, a, 3);
                if let Some(d) = cmd.get_mut(1) {
                    *d = (*d & !PC_STORE_INDEX) | PC_GGTT;
                }
                self.patched();
            } else {
                let space = self.mi_space(dw1 & PC_GGTT != 0);
                self.access(space, "post-sync address", addr(cmd, 2, 2), 8)?;
            }
        }
        Ok(Flow::Next)
    }

    /// Bounds the surfaces of a GGTT-addressed blit.
    fn blit(&self, kind: BlitKind, cmd: &[u32]) -> Result<(), Reason> {
        let dw0 = dw(cmd, 0);
        match kind {
            BlitKind::Opaque => Err(Reason::UnboundedSurface),
            BlitKind::ColorFill => {
                need_len(cmd, cmd.len() >= 7, "at least 7")?;
                let br13 = dw(cmd, 1);
                let cpp = legacy_cpp(br13);
                let tiled = dw0 & (1 << 11) != 0;
                let pitch = i64::from(br13 as u16 as i16) * if tiled { 4 } else { 1 };
                let rect = Rect::from_dwords(dw(cmd, 2), dw(cmd, 3));
                self.surface("destination", addr(cmd, 4, 0), pitch, cpp, tiled, rect)
            }
            BlitKind::SrcCopy | BlitKind::FastCopy => {
                need_len(cmd, cmd.len() >= 10, "at least 10")?;
                let br13 = dw(cmd, 1);
                let (cpp, dst_tiled, src_tiled) = if kind == BlitKind::SrcCopy {
                    (legacy_cpp(br13), dw0 & (1 << 11) != 0, dw0 & (1 << 15) != 0)
                } else {
                    let cpp = match (br13 >> 24) & 7 {
                        0 => 1,
                        1 => 2,
                        2 => 4,
                        3 => 8,
                        _ => 16,
                    };
                    (cpp, br13 >> 30 != 0, (dw0 >> 20) & 3 != 0)
                };
                let scale = |tiled: bool| if tiled { 4 } else { 1 };
                let dst_pitch = i64::from(br13 as u16 as i16) * scale(dst_tiled);
                let src_pitch = i64::from(dw(cmd, 7) as u16 as i16) * scale(src_tiled);
                let dst = Rect::from_dwords(dw(cmd, 2), dw(cmd, 3));
                self.surface("destination", addr(cmd, 4, 0), dst_pitch, cpp, dst_tiled, dst)?;
                let src = dst.moved_to(dw(cmd, 6));
                self.surface("source", addr(cmd, 8, 0), src_pitch, cpp, src_tiled, src)
            }
        }
    }

    /// Audits the bytes a 2D rectangle touches on a surface at `base` with `pitch` bytes per row.
    fn surface(&self, what: &'static str, base: u64, pitch: i64, cpp: i64, tiled: bool, r: Rect) -> Result<(), Reason> {
        if r.x2 <= r.x1 || r.y2 <= r.y1 {
            return Ok(()); // an empty rectangle touches nothing
        }
        // Tiles spread a rectangle over whole tile rows; 256 rows bounds every Gen9 tiling.
        let (y1, y2) = if tiled { (r.y1 & !255, (r.y2 + 255) & !255) } else { (r.y1, r.y2) };
        let (x1, x2) = if tiled { (0, pitch.abs()) } else { (r.x1 * cpp, r.x2 * cpp) };
        let first_row = y1 * pitch;
        let last_row = (y2 - 1) * pitch;
        let start = first_row.min(last_row) + x1;
        let end = first_row.max(last_row) + x2.max(x1 + 1);
        let (Some(lo), Some(hi)) = (base.checked_add_signed(start), base.checked_add_signed(end)) else {
            return Err(Reason::AddressOutsideWindows { what, addr: base, size: 0 });
        };
        if hi <= lo {
            return Err(Reason::AddressOutsideWindows { what, addr: base, size: 0 });
        }
        self.access(AddrSpace::Ggtt, what, lo, hi - lo)
    }
}

/// Bytes per pixel of a legacy (XY_*) blit from BR13 bits 25:24.
fn legacy_cpp(br13: u32) -> i64 {
    match (br13 >> 24) & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => 4,
    }
}

/// A blit rectangle, exclusive at x2/y2.
#[derive(Clone, Copy)]
struct Rect {
    x1: i64,
    y1: i64,
    x2: i64,
    y2: i64,
}

impl Rect {
    fn from_dwords(top_left: u32, bottom_right: u32) -> Rect {
        Rect {
            x1: i64::from(top_left & 0xffff),
            y1: i64::from(top_left >> 16),
            x2: i64::from(bottom_right & 0xffff),
            y2: i64::from(bottom_right >> 16),
        }
    }

    fn moved_to(self, top_left: u32) -> Rect {
        let (x, y) = (i64::from(top_left & 0xffff), i64::from(top_left >> 16));
        Rect { x1: x, y1: y, x2: x + (self.x2 - self.x1), y2: y + (self.y2 - self.y1) }
    }
}
