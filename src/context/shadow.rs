//! The shadow context: the image the engine really loads, built from the guest's context image,
//! and the write-back of what the engine saved into it after the workload completes.
//!
//! The ring-context part of the register-state page (its first 0x50 dwords: the register-load
//! headers, ring registers, batch state, workaround pointers, timestamp, page-table roots) is the
//! host's: its structure comes from a template and only these values are taken from the guest:
//! CONTEXT_CONTROL (mask bits forced on), CTX_TIMESTAMP, INDIRECT_CTX_OFFSET and, on the blitter,
//! the tile register. Ring registers point at the shadow ring, roots at the shadow PPGTT, the
//! workaround pointers at their shadows; the batch state is cleared so a restore never resumes a
//! guest batch. Everything after dword 0x50 (the engine context) is copied from the guest and
//! scanned as the command stream the engine executes on restore.
//!
//! Every guest value is read once, and that one read decides both what is checked and what the
//! engine loads. The ring context's values that shaped the ring and workaround-batch scans come
//! from [`GuestContext`] (read at submission); CONTEXT_CONTROL and the engine context are read
//! when the engine would load them, here, once. A context with restore inhibit set in that read
//! gets the host's *clean* engine context (what the engine saved of a context run from reset, see
//! [`ShadowContext::new`]) with the inhibit bit cleared: the engine then starts from known state
//! instead of whatever the previous context on the physical engine, maybe another vGPU's, left
//! behind, and nothing of the guest's engine context is loaded.
//!
//! Copies are skipped where they cannot matter: a resubmission of the context last run on this
//! engine (same LRCA, same guest pages) still has its engine state in the shadow, since only the
//! engine writes it.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemory};
use zerocopy::IntoBytes;

use super::image::{context_size, has_wa_fields, idx, ContextError, GuestContext};
use crate::cmd::{
    scan_context_image, AddrSpace, CommandTable, Decoded, GmTranslate, Handler, ScanError, ScanParams, ScanStats,
    PAGE_SIZE,
};
use crate::hw::lrc::{self, CTX_RESTORE_INHIBIT, PAGE_DWORDS};
use crate::hw::{Engine, Gen};
use crate::mm::ShadowRoot;

pub use crate::hw::lrc::ENGINE_CONTEXT_DWORD;

/// Mask half of a masked register: every bit of the low half is written.
const MASK_ALL: u32 = 0xffff_0000;

/// Where the host put what the shadow context points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowPlan {
    /// Host GGTT address of the shadow ring (4 KiB aligned).
    pub ring_start: u64,
    /// Size of the shadow ring in bytes (a multiple of 4 KiB).
    pub ring_size: u32,
    /// Head and tail byte offsets of the workload in the shadow ring.
    pub head: u32,
    /// Tail byte offset.
    pub tail: u32,
    /// The shadow page-table roots.
    pub root: ShadowRoot,
    /// Host GGTT address of the shadowed indirect-context batch, if the guest has one.
    pub indirect_ctx: Option<u64>,
    /// Host GGTT address of the shadowed per-context batch, if the guest has one.
    pub bb_per_ctx: Option<u64>,
}

/// Errors building or writing back a shadow context.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShadowContextError {
    /// The guest image could not be read or written.
    #[error(transparent)]
    Image(#[from] ContextError),
    /// The engine context failed the scan.
    #[error("context image: {0}")]
    Scan(ScanError),
    /// The plan does not fit the hardware fields.
    #[error("shadow plan: {0}")]
    BadPlan(&'static str),
}

/// What [`ShadowContext::populate`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Populated {
    /// Pages copied from the guest (the register-state page counts as one).
    pub pages_copied: u32,
    /// The engine-context copy was skipped (restore inhibit or same context).
    pub skipped: bool,
    /// The guest's context has restore inhibit set: the host's clean engine context was loaded
    /// instead of the guest's.
    pub clean: bool,
    /// The engine context was scanned; its statistics.
    pub scan: Option<ScanStats>,
}

/// The context last populated on this engine: its LRCA and the guest pages of its image.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Last {
    lrca: u64,
    gpas: Vec<u64>,
}

/// Dwords of the image before the engine context: page 0 and the ring context.
pub(crate) const RING_PART: usize = PAGE_DWORDS + ENGINE_CONTEXT_DWORD;
/// Dwords of the engine context that lie in the register-state page.
const STATE_PART: usize = PAGE_DWORDS - ENGINE_CONTEXT_DWORD;

/// One vGPU's shadow context image for one engine.
#[derive(Clone, Debug)]
pub struct ShadowContext {
    gen: Gen,
    engine: Engine,
    /// The image up to the engine context: page 0 (status page) and the ring context.
    ring: Vec<u32>,
    /// The engine context: register-state page from dword 0x50, then pages 2..N-1. Kept apart so
    /// the scanner works on it in place.
    engine_ctx: Vec<u32>,
    /// The host's clean engine context, loaded for restore-inhibit contexts.
    clean: Arc<[u32]>,
    /// The clean context's structure, which every guest engine context is given.
    structure: Arc<Structure>,
    last: Option<Last>,
    /// The engine-context part of the register-state page as last scanned or written back.
    scanned_state: Vec<u32>,
    gpas: Vec<u64>,
}

/// Dwords of the engine context of `engine` on `gen` (from dword 0x50 of the register-state page
/// to the end of the image): the length of a clean context.
pub fn engine_context_dwords(gen: Gen, engine: Engine) -> usize {
    ((context_size(gen, engine) / 4) as usize).saturating_sub(RING_PART)
}

/// The engine context the layout of [`hw::lrc`](crate::hw::lrc) describes with every register 0:
/// what an engine saves from a context it ran straight after a reset, when its registers read 0.
/// Hosts record their own clean context (see `host::record_clean_context`); this is the fallback.
pub fn blank_engine_context(gen: Gen, engine: Engine) -> Vec<u32> {
    let mut out = vec![0u32; engine_context_dwords(gen, engine)];
    let base = engine.mmio_base();
    let at = |i: usize| i.checked_sub(ENGINE_CONTEXT_DWORD);
    for list in std::iter::once(lrc::engine_context_list(gen, engine)).chain(lrc::render_state_list(gen, engine)) {
        if let Some(h) = at(list.header).and_then(|i| out.get_mut(i)) {
            *h = lrc::lri_header(list.regs.len());
        }
        for (k, r) in list.regs.iter().enumerate() {
            if let Some(d) = at(list.value_index(k) - 1).and_then(|i| out.get_mut(i)) {
                *d = base + r;
            }
        }
    }
    out
}

/// The structure of a clean engine context: the dwords that are not values (command headers, the
/// register dwords of register-load lists, the MI_NOOPs between commands) up to the end of its
/// last command. A guest engine context is given this structure before it is scanned, keeping
/// only its values: whatever the guest wrote there (a list cut short, an early
/// MI_BATCH_BUFFER_END, nothing at all), the engine restores every register the clean context
/// restores, so nothing of the previous context on the engine, maybe another vGPU's, survives
/// into it.
#[derive(Debug, Default)]
struct Structure {
    /// `(index, dword)` pairs the guest's engine context must hold.
    fixed: Vec<(usize, u32)>,
    /// Ranges that must be MI_NOOP.
    noops: Vec<std::ops::Range<usize>>,
}

impl Structure {
    fn of(clean: &[u32], gen: Gen, engine: Engine) -> Structure {
        let table = CommandTable::for_gen(gen);
        let mut s = Structure::default();
        let mut i = 0;
        let mut noop_from = None;
        while let Some(&dw0) = clean.get(i) {
            if dw0 == 0 {
                noop_from.get_or_insert(i);
                i += 1;
                continue;
            }
            if let Some(from) = noop_from.take() {
                s.noops.push(from..i);
            }
            let (d, len) = table.decode_with_len(engine, dw0);
            let len = (len as usize).max(1);
            s.fixed.push((i, dw0));
            match d {
                Decoded::Command(desc) if desc.handler == Handler::Lri => {
                    let end = (i + len).min(clean.len());
                    s.fixed.extend((i + 1..end).step_by(2).filter_map(|j| clean.get(j).map(|&r| (j, r))));
                }
                Decoded::Command(desc) if desc.handler == Handler::BbEnd => break,
                _ => {}
            }
            i += len;
        }
        s
    }

    fn apply(&self, ctx: &mut [u32]) {
        for r in &self.noops {
            if let Some(d) = ctx.get_mut(r.clone()) {
                d.fill(0);
            }
        }
        for &(i, v) in &self.fixed {
            if let Some(d) = ctx.get_mut(i) {
                *d = v;
            }
        }
    }
}

impl ShadowContext {
    /// A shadow context for `engine` on `gen`, holding the host's ring-context template. `clean`
    /// is the host's clean engine context for this engine (dwords from 0x50 of the register-state
    /// page to the end of the image; see [`blank_engine_context`]), loaded in place of the
    /// engine context of a guest context that has restore inhibit set.
    pub fn new(gen: Gen, engine: Engine, clean: Arc<[u32]>) -> Self {
        let mut ring = vec![0u32; RING_PART];
        if let Some(state) = ring.get_mut(PAGE_DWORDS..) {
            write_template(state, gen, engine);
        }
        let engine_ctx = vec![0u32; engine_context_dwords(gen, engine)];
        let structure = Arc::new(Structure::of(&clean, gen, engine));
        ShadowContext {
            gen,
            engine,
            ring,
            engine_ctx,
            clean,
            structure,
            last: None,
            scanned_state: Vec::new(),
            gpas: Vec::new(),
        }
    }

    /// A shadow context whose clean engine context is [`blank_engine_context`].
    pub fn with_blank_clean(gen: Gen, engine: Engine) -> Self {
        Self::new(gen, engine, blank_engine_context(gen, engine).into())
    }

    /// Prepares the image for recording the host's clean engine context: an empty ring at
    /// `ring_start` (`ring_size` bytes), no page tables, restore inhibit set, engine context
    /// zero. Running it on an engine fresh from reset leaves in the engine context what the
    /// engine saved.
    pub fn prepare_recording(&mut self, ring_start: u64, ring_size: u32) {
        self.invalidate();
        self.engine_ctx.fill(0);
        let pages = (ring_size / PAGE_SIZE as u32).clamp(1, 512);
        self.set_state(idx::CONTEXT_CONTROL, MASK_ALL | CTX_RESTORE_INHIBIT);
        self.set_state(idx::RING_HEAD, 0);
        self.set_state(idx::RING_TAIL, 0);
        self.set_state(idx::RING_START, ring_start as u32);
        self.set_state(idx::RING_CTL, ((pages - 1) << 12) | 1);
        for i in (idx::BATCH_STATE_FIRST..=idx::BATCH_STATE_LAST).step_by(2) {
            self.set_state(i, 0);
        }
        for i in [idx::INDIRECT_CTX, idx::BB_PER_CTX_PTR, idx::INDIRECT_CTX_OFFSET, idx::CTX_TIMESTAMP] {
            self.set_state(i, 0);
        }
        for n in 0..4 {
            self.set_state(idx::PDP3_UDW + 4 * n, 0);
            self.set_state(idx::PDP3_UDW + 4 * n + 2, 0);
        }
    }

    /// The image (dwords), as the engine loads it.
    pub fn image(&self) -> Vec<u32> {
        [&self.ring[..], &self.engine_ctx[..]].concat()
    }

    /// The image in its two parts, without copying: page 0 and the ring context (dwords
    /// `0..0x450`), then the engine context.
    pub fn parts(&self) -> (&[u32], &[u32]) {
        (&self.ring, &self.engine_ctx)
    }

    /// The two parts, mutable, for an engine that loads and saves the image in place.
    pub fn parts_mut(&mut self) -> (&mut [u32], &mut [u32]) {
        (&mut self.ring, &mut self.engine_ctx)
    }

    /// Dword `i` of the image for the engine to save into (the software GPU saves state here).
    pub fn image_dword_mut(&mut self, i: usize) -> Option<&mut u32> {
        match i.checked_sub(RING_PART) {
            None => self.ring.get_mut(i),
            Some(e) => self.engine_ctx.get_mut(e),
        }
    }

    /// Value dword `i` of the register-state page.
    pub fn state(&self, i: usize) -> u32 {
        let d = match i.checked_sub(ENGINE_CONTEXT_DWORD) {
            None => self.ring.get(PAGE_DWORDS + i),
            Some(e) => self.engine_ctx.get(e),
        };
        d.copied().unwrap_or(0)
    }

    fn set_state(&mut self, i: usize, v: u32) {
        if let Some(d) = self.image_dword_mut(PAGE_DWORDS + i) {
            *d = v;
        }
    }

    /// Forgets the last context (the guest rewrote GGTT entries of it, or the vGPU was reset).
    pub fn invalidate(&mut self) {
        self.last = None;
        self.scanned_state.clear();
    }

    /// Records the context at `lrca`, whose image pages are `self.gpas`, as the one the shadow holds.
    fn remember_context(&mut self, lrca: u64) {
        match &mut self.last {
            Some(l) if l.lrca == lrca && l.gpas == self.gpas => {}
            Some(l) => {
                l.lrca = lrca;
                l.gpas.clone_from(&self.gpas);
            }
            None => self.last = Some(Last { lrca, gpas: self.gpas.clone() }),
        }
    }

    fn remember_state_part(&mut self) {
        let part = self.engine_ctx.get(..STATE_PART).unwrap_or_default();
        self.scanned_state.clear();
        self.scanned_state.extend_from_slice(part);
    }

    /// Guest physical addresses of pages 1..N-1 of the image at `lrca`, through the GGTT.
    fn translate_pages<T: GmTranslate + ?Sized>(&mut self, xlate: &T, lrca: u64) -> Result<(), ContextError> {
        let pages = context_size(self.gen, self.engine) / PAGE_SIZE;
        self.gpas.clear();
        for p in 1..pages {
            let gma = lrca.checked_add(p * PAGE_SIZE).ok_or(ContextError::Unmapped(lrca))?;
            let gpa = xlate.translate(AddrSpace::Ggtt, gma).ok_or(ContextError::Unmapped(gma))?;
            self.gpas.push(gpa.0);
        }
        Ok(())
    }

    /// Builds the shadow context for a workload of `guest` (read with
    /// [`read_guest_context`](super::read_guest_context)) as `plan` places it. `scan` gives the
    /// scanner's parameters for this vGPU and engine (its ring field is not used).
    pub fn populate<M, T>(
        &mut self,
        mem: &M,
        xlate: &T,
        guest: &GuestContext,
        plan: &ShadowPlan,
        scan: &ScanParams,
    ) -> Result<Populated, ShadowContextError>
    where
        M: GuestMemory + ?Sized,
        T: GmTranslate + ?Sized,
    {
        let result = self.populate_inner(mem, xlate, guest, plan, scan);
        if result.is_err() {
            self.invalidate();
        }
        result
    }

    fn populate_inner<M, T>(
        &mut self,
        mem: &M,
        xlate: &T,
        guest: &GuestContext,
        plan: &ShadowPlan,
        scan: &ScanParams,
    ) -> Result<Populated, ShadowContextError>
    where
        M: GuestMemory + ?Sized,
        T: GmTranslate + ?Sized,
    {
        if plan.ring_start % PAGE_SIZE != 0 || plan.ring_start >> 32 != 0 {
            return Err(ShadowContextError::BadPlan("ring start must be a 4 KiB-aligned 32-bit address"));
        }
        let ring_pages = plan.ring_size / PAGE_SIZE as u32;
        if plan.ring_size % PAGE_SIZE as u32 != 0 || !(1..=512).contains(&ring_pages) {
            return Err(ShadowContextError::BadPlan("ring size must be 1..512 pages"));
        }
        self.translate_pages(xlate, guest.lrca)?;
        let same = self.last.as_ref().is_some_and(|l| l.lrca == guest.lrca && l.gpas == self.gpas);

        let mut out = Populated::default();
        let state_gpa = self.gpas.first().copied().unwrap_or(0);
        // The one read of the guest's ring context: CONTEXT_CONTROL (which decides whether the
        // engine context is loaded at all), the timestamp and the blitter's tile register.
        let mut ring_ctx = [0u32; ENGINE_CONTEXT_DWORD];
        mem.read_slice(ring_ctx.as_mut_bytes(), GuestAddress(state_gpa))
            .map_err(|_| ContextError::BadGuestMemory(state_gpa))?;
        out.pages_copied = 1;
        let guest_state = |i: usize| ring_ctx.get(i).copied().map_or(0, u32::from_le);
        let control = guest_state(idx::CONTEXT_CONTROL);
        let inhibit = control & CTX_RESTORE_INHIBIT != 0;
        let (timestamp, tile) = (guest_state(idx::CTX_TIMESTAMP), guest_state(idx::BCS_SWCTRL));

        // CONTEXT_CONTROL as loaded: a restore-inhibit context restores the host's clean engine
        // context instead, so the bit is cleared.
        let loaded_control = if inhibit { control & !CTX_RESTORE_INHIBIT } else { control };
        self.set_state(idx::CONTEXT_CONTROL, loaded_control | MASK_ALL);
        self.set_state(idx::CTX_TIMESTAMP, timestamp);
        self.set_state(idx::RING_HEAD, plan.head & 0x001f_fffc);
        self.set_state(idx::RING_TAIL, plan.tail & 0x001f_fff8);
        self.set_state(idx::RING_START, plan.ring_start as u32);
        self.set_state(idx::RING_CTL, ((ring_pages - 1) << 12) | 1);
        for i in (idx::BATCH_STATE_FIRST..=idx::BATCH_STATE_LAST).step_by(2) {
            self.set_state(i, 0); // batch state: never resume a guest batch
        }
        if has_wa_fields(self.gen, self.engine) {
            // Sizes and flags from the read the workaround batches were scanned with.
            let indirect = match (plan.indirect_ctx, guest.indirect_ctx) {
                (Some(a), Some((_, size))) => (a as u32 & 0xffff_ffc0) | ((size / 64) as u32 & 0x3f),
                _ => 0,
            };
            let per_ctx = match (plan.bb_per_ctx, guest.bb_per_ctx) {
                (Some(a), Some(_)) => (a as u32 & 0xffff_f000) | guest.bb_per_ctx_flags,
                _ => 0,
            };
            self.set_state(idx::INDIRECT_CTX, indirect);
            self.set_state(idx::BB_PER_CTX_PTR, per_ctx);
            self.set_state(idx::INDIRECT_CTX_OFFSET, guest.indirect_ctx_offset);
        }
        for (n, pdp) in plan.root.pdps().iter().enumerate() {
            let udw = idx::PDP3_UDW + 4 * (3 - n);
            self.set_state(udw, (pdp >> 32) as u32);
            self.set_state(udw + 2, *pdp as u32);
        }
        if self.engine == Engine::Bcs {
            self.set_state(idx::BCS_SWCTRL, tile);
        }

        if inhibit {
            // Nothing of the guest's engine context is read or loaded: the engine restores the
            // host's clean one. Nothing here counts as this context's checked image until the
            // engine has saved into it and it was written back.
            let clean = self.clean.clone();
            let n = clean.len().min(self.engine_ctx.len());
            if let (Some(dst), Some(src)) = (self.engine_ctx.get_mut(..n), clean.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.engine_ctx.get_mut(n..).unwrap_or_default().fill(0);
            self.invalidate();
            out.skipped = true;
            out.clean = true;
            return Ok(out);
        }

        // The engine context of the register-state page, read once, straight into the shadow.
        let state = self.engine_ctx.get_mut(..STATE_PART).unwrap_or_default();
        let at = GuestAddress(state_gpa + 4 * ENGINE_CONTEXT_DWORD as u64);
        mem.read_slice(state.as_mut_bytes(), at).map_err(|_| ContextError::BadGuestMemory(state_gpa))?;
        // The rest of the engine context, unless the shadow still holds this context's own save.
        if same {
            out.skipped = true;
        } else {
            out.pages_copied += self.copy_pages(mem, false)?;
        }
        self.structure.apply(&mut self.engine_ctx);
        // Scan unless nothing guest-written changed since the last scan (same context, state page
        // as scanned or as written back).
        let state_part = self.engine_ctx.get(..STATE_PART).unwrap_or_default();
        let unchanged = same && self.scanned_state == state_part;
        if !unchanged {
            let stats = scan_context_image(mem, xlate, scan, &mut self.engine_ctx).map_err(ShadowContextError::Scan)?;
            out.scan = Some(stats);
            self.remember_state_part();
        }
        self.remember_context(guest.lrca);
        Ok(out)
    }

    /// Copies pages 2..N-1 between the guest and the shadow (to the guest when `back`), one
    /// transfer per run of physically contiguous guest pages. Returns the pages moved.
    fn copy_pages<M: GuestMemory + ?Sized>(&mut self, mem: &M, back: bool) -> Result<u32, ContextError> {
        let mut p = 1; // index into gpas: page 2 of the image
        let mut moved = 0;
        while let Some(&start) = self.gpas.get(p) {
            let mut run = 1;
            while self.gpas.get(p + run).is_some_and(|&g| Some(g) == start.checked_add(run as u64 * PAGE_SIZE)) {
                run += 1;
            }
            // Image page p + 1 starts in the engine context at (p + 1) * 1024 - RING_PART.
            let first = (p + 1) * PAGE_DWORDS - RING_PART;
            let Some(chunk) = self.engine_ctx.get_mut(first..first + run * PAGE_DWORDS) else { break };
            let r = if back {
                mem.write_slice(chunk.as_bytes(), GuestAddress(start))
            } else {
                mem.read_slice(chunk.as_mut_bytes(), GuestAddress(start))
            };
            r.map_err(|_| ContextError::BadGuestMemory(start))?;
            p += run;
            moved += run as u32;
        }
        Ok(moved)
    }

    /// After the workload completed: writes the engine state the engine saved into the shadow
    /// back to the guest image, and the guest's RING_HEAD as "consumed up to `guest_tail`"
    /// (wrap count advanced if the ring wrapped). Returns the new RING_HEAD value.
    pub fn write_back<M, T>(&mut self, mem: &M, xlate: &T, guest: &GuestContext) -> Result<u32, ShadowContextError>
    where
        M: GuestMemory + ?Sized,
        T: GmTranslate + ?Sized,
    {
        self.translate_pages(xlate, guest.lrca)?;
        let state_gpa = self.gpas.first().copied().unwrap_or(0);
        let bad = |_| ContextError::BadGuestMemory(state_gpa);
        let engine_ctx = self.engine_ctx.get(..STATE_PART).unwrap_or_default();
        mem.write_slice(engine_ctx.as_bytes(), GuestAddress(state_gpa + 4 * ENGINE_CONTEXT_DWORD as u64))
            .map_err(bad)?;
        self.copy_pages(mem, true)?;
        let r = guest.ring.ring;
        let wrap =
            if r.tail < r.head { guest.ring.head_wrap.wrapping_add(1) % 2048 } else { guest.ring.head_wrap % 2048 };
        let head = (wrap << 21) | r.tail;
        let put = |i: usize, v: u32| mem.write_obj(v.to_le(), GuestAddress(state_gpa + 4 * i as u64)).map_err(bad);
        put(idx::RING_HEAD, head)?;
        put(idx::CONTEXT_CONTROL, self.state(idx::CONTEXT_CONTROL))?;
        put(idx::CTX_TIMESTAMP, self.state(idx::CTX_TIMESTAMP))?;
        if self.engine == Engine::Bcs {
            put(idx::BCS_SWCTRL, self.state(idx::BCS_SWCTRL))?;
        }
        // The guest image now equals the shadow's engine state: a resubmission may skip the copy.
        self.remember_state_part();
        self.remember_context(guest.lrca);
        Ok(head)
    }
}

/// Writes the ring-context template (headers and register addresses) into a register-state page.
fn write_template(state: &mut [u32], gen: Gen, engine: Engine) {
    let base = engine.mmio_base();
    for list in lrc::ring_context_lists(gen, engine) {
        if let Some(h) = state.get_mut(list.header) {
            *h = lrc::lri_header(list.regs.len());
        }
        for (k, r) in list.regs.iter().enumerate() {
            if let Some(d) = state.get_mut(list.value_index(k) - 1) {
                *d = base + r;
            }
        }
    }
}

#[cfg(test)]
mod tests;
