//! Entry point shared by the `elsp` fuzz target and the corpus replay under `cargo test`: a guest
//! writing arbitrary memory and driving ELSP, the CSB pointer and completions in any order. Every
//! submitted descriptor goes through workload creation (context read, PPGTT shadowing, scan).
//! Returns `Err` for a violated invariant, never panics; `Ok` says whether a workload was created.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{create_workload, fetch_batch, reg, VirtualExeclist, WorkloadParams, CSB_ENTRIES, CSB_WP_RESET};
use crate::cmd::{AddrSpace, GmRange, GmWindows, LinearTranslation, ScanLimits};
use crate::context::{context_size, image::idx};
use crate::hw::{Engine, Gen};
use crate::mm::ppgtt::testing::HostTables;
use crate::mm::ppgtt::{PpgttLimits, PpgttRoot, Revalidate, ShadowPpgtt};

const MEM: u64 = 0x4_0000;
/// The aperture window maps guest memory linearly.
const AP: GmRange = GmRange::new(0x10_0000, MEM);

/// `[engine, n, n × (gpa u32, dword u32), ops × (op u8, value u32)]`, all little-endian. Engine
/// bit 0 selects the render engine (else the blitter), bit 1 Gen8. Ops: 0 ELSP write, 1 the
/// running element completes, 2 register read, 3 CSB pointer write, 4 CSB mirror into a status
/// page, 5 engine reset, 6 guest writes a dword, 7 guest write reported to the PPGTT cache.
pub fn elsp_bytes(data: &[u8]) -> Result<bool, String> {
    let [sel, n, rest @ ..] = data else { return Ok(false) };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).map_err(|e| e.to_string())?;
    let poke = |gpa: u32, v: u32| {
        let _ = mem.write_obj(v.to_le(), GuestAddress((u64::from(gpa) % MEM) & !3));
    };
    let (writes, ops) = rest.split_at(rest.len().min(usize::from(*n) * 8));
    for w in writes.chunks_exact(8) {
        let (a, v) = w.split_at(4);
        poke(u32_le(a), u32_le(v));
    }
    let engine = if sel & 1 != 0 { Engine::Rcs } else { Engine::Bcs };
    let gen = if sel & 2 != 0 { Gen::Gen8 } else { Gen::Gen9 };
    let windows = GmWindows { aperture: AP, hidden: GmRange::default() };
    let mut ggtt = LinearTranslation::new();
    ggtt.map(AddrSpace::Ggtt, AP, GuestAddress(0));
    let params = WorkloadParams {
        gen,
        engine,
        windows,
        limits: ScanLimits { max_bytes: 1 << 20, max_batches: 64 },
        resume_head: None,
    };
    let mut host = HostTables::default();
    let mut ppgtt = ShadowPpgtt::new(&mut host, PpgttLimits { max_tables: 128, max_roots: 4 }, Box::new(Revalidate))
        .map_err(|e| e.to_string())?;
    let mut el = VirtualExeclist::new(context_size(gen, engine));
    let mut pinned: Vec<PpgttRoot> = Vec::new();
    let mut created = false;

    for op in ops.chunks_exact(5) {
        let (code, v) = op.split_at(1);
        let v = u32_le(v);
        match code.first().copied().unwrap_or(0) % 8 {
            0 => {
                if let Ok(Some(sub)) = el.write_elsp(v, &windows) {
                    for desc in sub.elements.iter().flatten() {
                        if let Ok(w) = create_workload(&mem, &ggtt, &mut ppgtt, &mut host, *desc, &params) {
                            created = true;
                            pinned.push(w.root);
                            // The engine reaches batch starts: fetch a few, and a loop of one.
                            let mut points: Vec<_> = w.ring.fetches.iter().take(2).copied().collect();
                            let mut fetched = 0;
                            while let Some(point) = points.pop().filter(|_| fetched < 4) {
                                fetched += 1;
                                let (root, shadow) = (w.root, w.shadow_root);
                                if let Ok(tree) =
                                    fetch_batch(&mem, &ggtt, &ppgtt, root, shadow, &w.guest, &params, &point)
                                {
                                    if tree.batches.is_empty() {
                                        return Err("a fetch that copied no batch".into());
                                    }
                                    points.extend(tree.fetches.first().copied());
                                }
                            }
                        }
                    }
                    let _ = el.schedule_in(&sub);
                }
            }
            1 => {
                if el.schedule_out().is_ok() && !pinned.is_empty() {
                    let root = pinned.remove(0);
                    ppgtt.unpin(&mut host, root).map_err(|e| format!("unpin of a pinned root: {e}"))?;
                }
            }
            2 => {
                let _ = el.read(v & 0x3fc);
            }
            3 => el.write_csb_ptr(v),
            4 => el.mirror_to_hwsp(&mem, &ggtt, AP.base + u64::from(v) % MEM, &windows),
            5 => {
                el.reset();
                for root in pinned.drain(..) {
                    ppgtt.unpin(&mut host, root).map_err(|e| e.to_string())?;
                }
            }
            6 => poke(v, v.rotate_left(13)),
            _ => ppgtt.page_written(GuestAddress(u64::from(v))),
        }
        let ptr = el.read(reg::CSB_PTR).ok_or("CSB pointer unreadable")?;
        let (wp, rp) = (ptr & 0xff, (ptr >> 8) & 0xff);
        if (wp as usize >= CSB_ENTRIES && wp != u32::from(CSB_WP_RESET)) || rp > 7 {
            return Err(format!("CSB pointer {ptr:#x} out of range"));
        }
        el.read(reg::STATUS_LO).ok_or("EXECLIST_STATUS unreadable")?;
    }
    for root in pinned.drain(..) {
        ppgtt.unpin(&mut host, root).map_err(|e| e.to_string())?;
    }
    ppgtt.destroy(&mut host);
    if host.live_tables() != 0 || host.live_mappings() != 0 {
        return Err(format!("leak: {} tables, {} mappings", host.live_tables(), host.live_mappings()));
    }
    Ok(created)
}

fn u32_le(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_le_bytes(a)
}

/// Seed inputs: a blitter and a render context whose rings start a PPGTT batch, submitted,
/// completed, resubmitted; and a few hostile variants.
pub fn seeds() -> Vec<Vec<u8>> {
    const LRCA: u32 = 0x10_8000;
    const PML4: u32 = 0x3_0000;
    let state = LRCA - AP.base as u32 + 0x1000;
    let mut w: Vec<(u32, u32)> = vec![
        (state + 4 * idx::RING_START as u32, AP.base as u32),
        (state + 4 * idx::RING_CTL as u32, 1),
        (state + 4 * idx::RING_TAIL as u32, 0x18),
        (state + 4 * (idx::PDP3_UDW as u32 + 14), PML4),
        // Ring: BB_START (PPGTT) 0x40_0000, USER_INTERRUPT, NOOP.
        (0, 0x1880_0101),
        (4, 0x40_0000),
        (12, 0x0100_0000),
        // PML4 -> PDP -> PD -> PT -> batch page 0x3_8000.
        (PML4, PML4 + 0x1003),
        (PML4 + 0x1000, PML4 + 0x2003),
        (PML4 + 0x2000 + 16, PML4 + 0x3003),
        (PML4 + 0x3000, 0x3_8003),
        // Batch: MI_STORE_DATA_IMM (PPGTT) 42 to 0x1000, MI_BATCH_BUFFER_END.
        (0x3_8000, 0x1000_0002),
        (0x3_8004, 0x1000),
        (0x3_800c, 42),
        (0x3_8010, 0x0500_0000),
    ];
    let desc_lo = LRCA | (3 << 3) | (1 << 8) | 1;
    let op = |code: u8, v: u32| {
        let mut r = vec![code];
        r.extend_from_slice(&v.to_le_bytes());
        r
    };
    let submit = [op(0, 0), op(0, 0), op(0, 7), op(0, desc_lo)].concat();
    let input = |sel: u8, w: &[(u32, u32)], ops: &[u8]| {
        let mut v = vec![sel, w.len() as u8];
        for (a, d) in w {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&d.to_le_bytes());
        }
        v.extend_from_slice(ops);
        v
    };
    let run = [submit.clone(), op(1, 0), op(2, reg::CSB_PTR), op(3, 0x0700_0500), op(4, 0x3000)].concat();
    let again = [submit.clone(), op(6, PML4 + 0x3000), submit.clone(), op(1, 0), op(1, 0), op(5, 0)].concat();
    let mut seeds = vec![input(0, &w, &run), input(0, &w, &again), input(2, &w, &run)];
    // Render with workaround batches.
    w.push((state + 4 * idx::INDIRECT_CTX as u32, 0x10_5000 | 1));
    w.push((state + 4 * idx::BB_PER_CTX_PTR as u32, 0x10_6000 | 1));
    w.push((0x6000, 0x0500_0000));
    seeds.push(input(1, &w, &run));
    // Hostile: a batch in the ring context, a ring outside the vGPU.
    let mut bad = w.clone();
    bad.push((state + 4 * idx::RING_START as u32, 0x1000));
    seeds.push(input(1, &bad, &run));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold() {
        let s = seeds();
        for (i, seed) in s.iter().enumerate() {
            let r = elsp_bytes(seed);
            assert!(r.is_ok(), "seed {i}: {r:?}");
            assert_eq!(r, Ok(i + 1 != s.len()), "seed {i}: only the hostile seed creates nothing");
        }
    }
}
