//! Where a backend puts an engine's shadow buffers in the host's part of the GGTT, and the
//! placement of one workload there: the shadow ring at the start of the engine's ring area, the
//! indirect-context and per-context workaround batches in their fixed slots, every other shadow
//! batch in the engine's batch arena, batch starts relocated to the placed copies.

use super::{EngineLayout, HostJob};
use crate::cmd::{ScannedWorkload, ShadowBuffer, PAGE_SIZE};
use crate::context::image::idx;
use crate::hw::Engine;

/// GGTT bytes of each engine's shadow area.
pub const ENGINE_AREA: u64 = 64 << 20;
const RING_SIZE: u64 = 2 << 20;
const INDIRECT_OFF: u64 = RING_SIZE;
const PER_CTX_OFF: u64 = INDIRECT_OFF + PAGE_SIZE;
const PER_CTX_SIZE: u64 = 64 << 10;
/// Offset of the engine's context area (page 0: the per-process status page).
pub const CONTEXT_OFF: u64 = PER_CTX_OFF + PER_CTX_SIZE;
const BATCH_OFF: u64 = 4 << 20;
/// Shadow batches start on 64-byte boundaries.
const BATCH_ALIGN: u64 = 64;

/// Copies dwords to a GGTT address of the engine's shadow area.
pub type Stage<'a> = dyn FnMut(u64, &[u32]) -> Result<(), String> + 'a;

/// GGTT address of `engine`'s shadow area when the areas start at `shadow_base`.
pub fn area_base(shadow_base: u64, engine: Engine) -> u64 {
    shadow_base + engine.index() as u64 * ENGINE_AREA
}

/// The fixed parts of `engine`'s shadow area.
pub fn layout(shadow_base: u64, engine: Engine) -> EngineLayout {
    let base = area_base(shadow_base, engine);
    EngineLayout {
        ring_start: base,
        ring_size: RING_SIZE as u32,
        indirect_ctx: base + INDIRECT_OFF,
        bb_per_ctx: base + PER_CTX_OFF,
        bb_per_ctx_size: PER_CTX_SIZE,
    }
}

/// Places `job`'s shadow buffers in `engine`'s area: relocates its batch starts and calls
/// `stage(gma, dwords)` for each buffer.
pub fn place(shadow_base: u64, engine: Engine, job: &mut HostJob<'_>, stage: &mut Stage<'_>) -> Result<(), String> {
    let base = area_base(shadow_base, engine);
    let end = base + ENGINE_AREA;
    let mut next = base + BATCH_OFF;
    let mut bump = |b: &ShadowBuffer| -> Option<u64> {
        let at = next;
        next = next.checked_add(b.len_bytes())?.checked_next_multiple_of(BATCH_ALIGN)?;
        (next <= end).then_some(at)
    };
    let mut overflow = false;
    job.ring.relocate(|_, b| {
        bump(b).unwrap_or_else(|| {
            overflow = true;
            0
        })
    });
    if overflow {
        return Err("the batches do not fit the batch arena".into());
    }
    if job.ring.ring.len_bytes() >= RING_SIZE {
        return Err("the ring does not fit the shadow ring".into());
    }
    stage(base, &job.ring.ring.dwords)?;
    stage_batches(job.ring, None, stage)?;
    let Some(wa) = job.wa.as_deref_mut() else { return Ok(()) };
    // The per-context batch (target of the start appended after the indirect context) goes to
    // its fixed slot; its own batches and the rest to the arena.
    let has_per_ctx = job.context.state(idx::BB_PER_CTX_PTR) & 1 != 0;
    let n = wa.ring.dwords.len();
    let per_ctx =
        has_per_ctx.then(|| wa.relocs.iter().find(|r| r.buffer == 0 && r.dword + 3 == n).map(|r| r.target)).flatten();
    let per_ctx_at = base + PER_CTX_OFF;
    let mut overflow = false;
    wa.relocate(|i, b| {
        if Some(i) == per_ctx {
            overflow |= b.len_bytes() > PER_CTX_SIZE;
            return per_ctx_at;
        }
        bump(b).unwrap_or_else(|| {
            overflow = true;
            0
        })
    });
    if overflow {
        return Err("the workaround batches do not fit their areas".into());
    }
    let indirect = wa.ring.dwords.get(..if per_ctx.is_some() { n.saturating_sub(3) } else { n }).unwrap_or_default();
    if indirect.len() as u64 * 4 > PAGE_SIZE {
        return Err("the indirect context does not fit its page".into());
    }
    stage(base + INDIRECT_OFF, indirect)?;
    stage_batches(wa, per_ctx.map(|i| (i, per_ctx_at)), stage)
}

/// Stages every batch of `w` where its relocations point (`fixed` gives one batch's slot).
fn stage_batches(w: &ScannedWorkload, fixed: Option<(usize, u64)>, stage: &mut Stage<'_>) -> Result<(), String> {
    let mut placed: Vec<Option<u64>> = vec![None; w.batches.len()];
    for r in &w.relocs {
        let Some(buf) = w.buffer(r.buffer) else { continue };
        let (Some(&lo), Some(&hi)) = (buf.dwords.get(r.dword + 1), buf.dwords.get(r.dword + 2)) else { continue };
        if let Some(p) = placed.get_mut(r.target) {
            *p = Some(u64::from(lo) | u64::from(hi) << 32);
        }
    }
    if let Some((i, at)) = fixed {
        if let Some(p) = placed.get_mut(i) {
            *p = Some(at);
        }
    }
    for (b, at) in w.batches.iter().zip(placed) {
        if let Some(at) = at {
            stage(at, &b.dwords)?;
        }
    }
    Ok(())
}
