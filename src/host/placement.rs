//! Where a backend puts an engine's shadow buffers in the host's part of the GGTT, and the
//! placement of one workload there: the shadow ring at the start of the engine's ring area, the
//! indirect-context and per-context workaround batches in their fixed slots, every other shadow
//! batch in the engine's batch arena, batch starts relocated to the placed copies.
//!
//! Batches fetched when the engine reaches them ([`FetchPoint`]s) work through a trap window: a
//! fetch point's batch start is relocated to its own address there, which holds nothing the
//! engine could run. A backend that sees the engine start a batch in the window stops it, has
//! the batch copied and scanned ([`Fetcher`]), places the result in one of four fetch regions
//! ([`resolve`]) and lets the engine go on there. On the software GPU the engine calls back; a
//! hardware backend would put a trap sequence there (store the slot number, raise an interrupt,
//! wait on a semaphore the host releases after it has placed the batch, then jump to it).

use super::{EngineLayout, HostJob};
use crate::cmd::{FetchPoint, ScannedWorkload, ShadowBuffer, PAGE_SIZE};
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
/// The fetch regions: two for trees fetched at level 1 (from the ring, or a loop at level 1),
/// two for loops at level 2, so a fetch never overwrites a batch the engine is still in.
const REGIONS_OFF: u64 = 16 << 20;
const REGIONS: usize = 4;
const L1_REGION: u64 = 18 << 20;
const L2_REGION: u64 = 4 << 20;
/// The trap window: 8 bytes per fetch point; the ring's first, then each region's.
const TRAP_OFF: u64 = REGIONS_OFF + 2 * L1_REGION + 2 * L2_REGION;
/// Where a relocation with no placed target points: above every GGTT (4 GiB at most), so the
/// engine faults there instead of running anything.
const NOWHERE: u64 = 1 << 40;
/// Room for the 64-byte alignment of up to 4096 batches in a region.
const ALIGN_SLACK: u64 = 256 << 10;
const TRAP_SLOT: u64 = 8;
const RING_TRAPS: u64 = 2 << 20;
const REGION_TRAPS: u64 = 512 << 10;
const TRAP_SIZE: u64 = RING_TRAPS + REGIONS as u64 * REGION_TRAPS;
const _: () = assert!(TRAP_OFF + TRAP_SIZE <= ENGINE_AREA);

/// Offset and size of fetch region `r` in an engine's area.
fn region_span(r: usize) -> (u64, u64) {
    match r {
        0 => (REGIONS_OFF, L1_REGION),
        1 => (REGIONS_OFF + L1_REGION, L1_REGION),
        2 => (REGIONS_OFF + 2 * L1_REGION, L2_REGION),
        _ => (REGIONS_OFF + 2 * L1_REGION + L2_REGION, L2_REGION),
    }
}

/// Most bytes one fetch at `level` may copy so that its tree fits its region: a fetcher caps its
/// scan budget with it, so a tree too large is refused by the scan, before it is placed.
pub fn fetch_budget(level: u8) -> u64 {
    (if level == 1 { L1_REGION } else { L2_REGION }) - ALIGN_SLACK
}

/// Copies and scans the batch a fetch point starts, as guest memory is when the engine reaches
/// it (see [`crate::cmd::scan_fetch`]); `Err` says why it is refused.
pub type FetchFn<'a> = dyn FnMut(&FetchPoint) -> Result<ScannedWorkload, String> + 'a;

/// A job's just-in-time fetching: the callback that copies and scans, and the fetched batches
/// still placed (the job keeps them, so a preempted run resumes in them).
pub struct Fetcher<'a> {
    /// Copies and scans a batch.
    pub fetch: &'a mut FetchFn<'a>,
    /// What is placed now.
    pub live: &'a mut FetchedBatches,
}

impl std::fmt::Debug for Fetcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("live", &self.live).finish()
    }
}

/// One fetched tree of batches where it is placed.
#[derive(Debug)]
struct PlacedTree {
    tree: ScannedWorkload,
    /// GGTT address of each of `tree.batches`.
    addrs: Vec<u64>,
}

/// The fetched batches a job has placed, one tree per fetch region.
#[derive(Debug, Default)]
pub struct FetchedBatches {
    regions: [Option<PlacedTree>; REGIONS],
    /// Fetches made (for reports).
    pub fetches: u64,
    /// Interrupts the fetched batches asked for (raised at completion with the ring's).
    pub events: crate::cmd::Events,
}

/// Where a trap address points: the ring's fetch point `n`, or fetch point `n` of the tree in
/// region `r`.
fn decode_trap(shadow_base: u64, engine: Engine, addr: u64) -> Option<(Option<usize>, usize)> {
    let off = addr.checked_sub(area_base(shadow_base, engine) + TRAP_OFF).filter(|&o| o < TRAP_SIZE)?;
    if off % TRAP_SLOT != 0 {
        return None;
    }
    if off < RING_TRAPS {
        return Some((None, (off / TRAP_SLOT) as usize));
    }
    let r = (off - RING_TRAPS) / REGION_TRAPS;
    Some((Some(r as usize), ((off - RING_TRAPS) % REGION_TRAPS / TRAP_SLOT) as usize))
}

fn trap_addr(shadow_base: u64, engine: Engine, region: Option<usize>, n: usize) -> Option<u64> {
    let (first, slots) = match region {
        None => (0, RING_TRAPS / TRAP_SLOT),
        Some(r) => (RING_TRAPS + r as u64 * REGION_TRAPS, REGION_TRAPS / TRAP_SLOT),
    };
    ((n as u64) < slots).then(|| area_base(shadow_base, engine) + TRAP_OFF + first + n as u64 * TRAP_SLOT)
}

/// Whether `addr` is in `engine`'s trap window (a batch start there is a fetch point).
pub fn is_trap(shadow_base: u64, engine: Engine, addr: u64) -> bool {
    let base = area_base(shadow_base, engine) + TRAP_OFF;
    (base..base + TRAP_SIZE).contains(&addr)
}

/// The engine reached the batch start relocated to `trap`: fetches the batch through `fetcher`,
/// places it (and what it reaches) in a fetch region, stages it, and returns where the engine
/// goes on and how many bytes the fetch copied. `ring` is the job's ring workload (its fetch
/// points are the ring's traps).
pub fn resolve(
    shadow_base: u64,
    engine: Engine,
    ring: &ScannedWorkload,
    fetcher: &mut Fetcher<'_>,
    trap: u64,
    stage: &mut Stage<'_>,
) -> Result<(u64, u64), FetchFailure> {
    let bad = |why: &str| FetchFailure::Placement(why.to_string());
    let (from, n) = decode_trap(shadow_base, engine, trap).ok_or_else(|| bad("a batch start into the trap window"))?;
    let point = match from {
        None => ring.fetches.get(n),
        Some(r) => fetcher.live.regions.get(r).and_then(Option::as_ref).and_then(|t| t.tree.fetches.get(n)),
    }
    .copied()
    .ok_or_else(|| bad("a trap with no fetch point"))?;
    let mut tree = (fetcher.fetch)(&point).map_err(FetchFailure::Refused)?;
    let bytes = tree.total_bytes();
    fetcher.live.fetches = fetcher.live.fetches.saturating_add(1);
    fetcher.live.events |= tree.events;
    // Level 1 alternates between regions 0 and 1, level 2 between 2 and 3: the tree holding the
    // start being executed (and at level 2 the level-1 batch that returns) stays where it is.
    let region = match (point.level, from) {
        (1, Some(0)) => 1,
        (1, _) => 0,
        (_, Some(2)) => 3,
        _ => 2,
    };
    if point.level == 1 {
        // The engine leaves every earlier level-1 and level-2 batch.
        fetcher.live.regions = Default::default();
    }
    let (off, size) = region_span(region);
    let base = area_base(shadow_base, engine) + off;
    let mut next = base;
    let mut addrs = Vec::with_capacity(tree.batches.len());
    for b in &tree.batches {
        addrs.push(bump(&mut next, base + size, b).ok_or_else(|| bad("the fetched batches do not fit their region"))?);
    }
    tree.relocate(|i, _| addrs.get(i).copied().unwrap_or(NOWHERE));
    point_at_traps(&mut tree, shadow_base, engine, Some(region)).ok_or_else(|| bad("too many loops in one fetch"))?;
    let placed = PlacedTree { tree, addrs };
    stage_tree(&placed, stage).map_err(FetchFailure::Placement)?;
    let entry = placed.addrs.first().copied().ok_or_else(|| bad("a fetch that copied no batch"))?;
    if let Some(slot) = fetcher.live.regions.get_mut(region) {
        *slot = Some(placed);
    }
    Ok((entry, bytes))
}

/// Fetches every batch `job`'s ring starts now, in ring order, for a backend that cannot stop its
/// engine at a fetch point: the workload then runs as scanned at dispatch. `Err` is a refusal.
pub fn fetch_now(job: &mut HostJob<'_>) -> Result<(), String> {
    if job.ring.fetches.is_empty() {
        return Ok(());
    }
    let f = job.fetcher.as_mut().ok_or("the workload fetches batches but the job has no fetcher")?;
    let mut trees = Vec::with_capacity(job.ring.fetches.len());
    // Everything fetched now is held at once and must fit the batch arena: stop at that, before
    // a ring that starts one large batch many times costs more.
    let mut held = 0u64;
    for p in &job.ring.fetches {
        let tree = (f.fetch)(p)?;
        held = held.saturating_add(tree.total_bytes());
        if held > TRAP_OFF - BATCH_OFF {
            return Err("the batches fetched at dispatch do not fit the batch arena".into());
        }
        trees.push(tree);
        f.live.fetches = f.live.fetches.saturating_add(1);
    }
    if !job.ring.absorb_fetches(trees) {
        return Err("a fetch copied no batch".into());
    }
    Ok(())
}

/// Why a fetch point could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchFailure {
    /// The batch was refused by the scan.
    #[error("refused: {0}")]
    Refused(String),
    /// It does not fit, or the trap is not one of the job's.
    #[error("{0}")]
    Placement(String),
}

/// The next `BATCH_ALIGN`-aligned place for `b` at `*next` below `end`, moving `*next` past it.
fn bump(next: &mut u64, end: u64, b: &ShadowBuffer) -> Option<u64> {
    let at = *next;
    *next = next.checked_add(b.len_bytes())?.checked_next_multiple_of(BATCH_ALIGN)?;
    (*next <= end).then_some(at)
}

/// Points `w`'s fetch points at their trap slots: the ring's (`region` `None`) or a fetch
/// region's. `None` if there are more than the slots.
fn point_at_traps(w: &mut ScannedWorkload, shadow_base: u64, engine: Engine, region: Option<usize>) -> Option<()> {
    let traps: Vec<u64> =
        (0..w.fetches.len()).map(|i| trap_addr(shadow_base, engine, region, i)).collect::<Option<_>>()?;
    w.relocate_fetches(|i| traps.get(i).copied().unwrap_or(NOWHERE));
    Some(())
}

fn stage_tree(t: &PlacedTree, stage: &mut Stage<'_>) -> Result<(), String> {
    for (b, &at) in t.tree.batches.iter().zip(&t.addrs) {
        stage(at, &b.dwords)?;
    }
    Ok(())
}

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
    // A job that fetches keeps the fetch regions for the batches it fetches.
    let end = base + if job.ring.fetches.is_empty() { TRAP_OFF } else { REGIONS_OFF };
    if !job.ring.fetches.is_empty() {
        let Some(f) = job.fetcher.as_ref() else {
            return Err("the workload fetches batches but the job has no fetcher".into());
        };
        point_at_traps(job.ring, shadow_base, engine, None).ok_or("too many batch starts in the ring")?;
        // A run that resumes a preempted one resumes in the batches it had fetched.
        for t in f.live.regions.iter().flatten() {
            stage_tree(t, stage)?;
        }
    }
    let mut next = base + BATCH_OFF;
    let mut bump = |b: &ShadowBuffer| bump(&mut next, end, b);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{AddrSpace, BufferKind, Events};
    use crate::context::ShadowContext;
    use crate::hw::Gen;

    const BASE: u64 = 0x8000_0000;
    const BBS: u32 = 0x1880_0001;

    /// A tree of one batch at `gma` (level `level`) that loops back to itself.
    fn looping(gma: u64, level: u8) -> ScannedWorkload {
        let mut t = ScannedWorkload::empty(BufferKind::Ring);
        let kind = BufferKind::Batch { level, space: AddrSpace::Ppgtt, gma };
        t.batches.push(ShadowBuffer { kind, dwords: vec![0x0280_0000, BBS | 1 << 8, gma as u32, 0] });
        t.fetches.push(FetchPoint { buffer: 1, dword: 1, space: AddrSpace::Ppgtt, gma, level });
        t.events = Events::USER_INTERRUPT;
        t
    }

    fn start_target(dwords: &[u32], at: usize) -> u64 {
        u64::from(dwords[at + 1]) | u64::from(dwords[at + 2]) << 32
    }

    #[test]
    fn fetch_points_trap_and_fetched_loops_alternate_between_regions() {
        let engine = Engine::Bcs;
        let mut ring = ScannedWorkload::host_ring(vec![BBS | 1 << 8, 0x5000, 0, 0]);
        ring.fetches.push(FetchPoint { buffer: 0, dword: 0, space: AddrSpace::Ppgtt, gma: 0x5000, level: 1 });
        let mut ctx = ShadowContext::with_blank_clean(Gen::Gen9, engine);
        let mut live = FetchedBatches::default();
        let mut asked = Vec::new();
        let mut fetch = |p: &FetchPoint| -> Result<ScannedWorkload, String> {
            asked.push(*p);
            match p.gma {
                0x6000 => Err("refused here".into()),
                gma => Ok(looping(gma, p.level)),
            }
        };
        let mut staged: Vec<u64> = Vec::new();
        {
            let mut job = HostJob::new(&mut ring, None, &mut ctx, false);
            // Without a fetcher the workload cannot be placed.
            assert!(place(BASE, engine, &mut job, &mut |_, _| Ok(())).is_err());
            job.fetcher = Some(Fetcher { fetch: &mut fetch, live: &mut live });
            place(BASE, engine, &mut job, &mut |gma, _| {
                staged.push(gma);
                Ok(())
            })
            .unwrap();
        }
        // The ring's start now points into the trap window, ring slot 0; only the ring was staged.
        let trap = start_target(&ring.ring.dwords, 0);
        assert!(is_trap(BASE, engine, trap) && !is_trap(BASE, Engine::Rcs, trap));
        assert_eq!(decode_trap(BASE, engine, trap), Some((None, 0)));
        assert_eq!(ring.ring.dwords[0] & 1 << 8, 0, "a GGTT start");
        assert_eq!(staged, [area_base(BASE, engine)]);

        let region = |r: u64| area_base(BASE, engine) + region_span(r as usize).0;
        let mut f = Fetcher { fetch: &mut fetch, live: &mut live };
        let mut stage = |_: u64, _: &[u32]| Ok(());
        // From the ring: region 0; each pass of the loop alternates 0 and 1.
        let (at, bytes) = resolve(BASE, engine, &ring, &mut f, trap, &mut stage).unwrap();
        assert_eq!((at, bytes), (region(0), 16));
        let mut trap = start_target(&f.live.regions[0].as_ref().unwrap().tree.batches[0].dwords, 1);
        for r in [1, 0, 1] {
            assert_eq!(decode_trap(BASE, engine, trap).map(|t| t.0), Some(Some(1 - r)));
            let (at, _) = resolve(BASE, engine, &ring, &mut f, trap, &mut stage).unwrap();
            assert_eq!(at, region(r as u64));
            trap = start_target(&f.live.regions[r].as_ref().unwrap().tree.batches[0].dwords, 1);
        }
        // A level-2 loop goes to regions 2 and 3, keeping the level-1 batch it returns to.
        f.live.regions[1].as_mut().unwrap().tree.fetches[0].level = 2;
        let (at, _) = resolve(BASE, engine, &ring, &mut f, trap, &mut stage).unwrap();
        assert_eq!(at, region(2));
        assert!(f.live.regions[1].is_some());
        let t2 = start_target(&f.live.regions[2].as_ref().unwrap().tree.batches[0].dwords, 1);
        assert_eq!(resolve(BASE, engine, &ring, &mut f, t2, &mut stage).unwrap().0, region(3));
        assert_eq!((f.live.fetches, f.live.events), (6, Events::USER_INTERRUPT));
        // A refusal, a trap with no fetch point, an address outside the window.
        f.live.regions[3].as_mut().unwrap().tree.fetches[0].gma = 0x6000;
        let t3 = start_target(&f.live.regions[3].as_ref().unwrap().tree.batches[0].dwords, 1);
        assert_eq!(
            resolve(BASE, engine, &ring, &mut f, t3, &mut stage),
            Err(FetchFailure::Refused("refused here".into()))
        );
        let empty = trap_addr(BASE, engine, None, 5).unwrap();
        assert!(matches!(resolve(BASE, engine, &ring, &mut f, empty, &mut stage), Err(FetchFailure::Placement(_))));
        assert!(matches!(resolve(BASE, engine, &ring, &mut f, BASE, &mut stage), Err(FetchFailure::Placement(_))));
        let _ = f;
        assert_eq!(asked.len(), 7);
    }
}
