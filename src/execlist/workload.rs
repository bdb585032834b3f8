//! Workload creation: from a submitted context descriptor to a scanned workload whose page tables
//! are shadowed and pinned.
//!
//! The guest context's ring registers are read through the vGPU's GGTT and validated (ring inside
//! the vGPU's windows, head and tail inside the ring, head wrap count kept); its PPGTT root is
//! shadowed and pinned; the ring is copied and scanned, and the batches it starts are left as
//! fetch points: [`fetch_batch`] copies and scans each (with what it reaches, PPGTT batches read
//! through the shadow's validated view of the guest tables) when the engine reaches it. On the
//! render engine the
//! indirect-context workaround batch and the per-context batch are shadowed and scanned too (one
//! stream: the indirect context followed by a start of the per-context batch, as GVT-g does).

use vm_memory::GuestMemory;

use super::descriptor::{AddressingMode, ContextDescriptor, DescriptorError};
use crate::cmd::fault_reason;
use crate::cmd::{
    copy_from_gm, scan_dwords, scan_fetch, scan_fetching, AddrSpace, FetchPoint, GmTranslate, GmWindows, ScanError,
    ScanLimits, ScanParams, ScannedWorkload, SplitTranslation,
};
use crate::context::{read_guest_context, ContextError, GuestContext};
use crate::hw::{Engine, Gen};
use crate::mm::{DmaMapper, PpgttError, PpgttRoot, ShadowMemory, ShadowPpgtt, ShadowRoot};

/// MI_BATCH_BUFFER_START (GGTT, first level), 3 dwords.
const BB_START_GGTT: u32 = 0x1880_0001;

/// What workload creation needs to know about the vGPU and engine.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadParams {
    /// Platform generation.
    pub gen: Gen,
    /// Engine the descriptor was submitted to.
    pub engine: Engine,
    /// The vGPU's GGTT windows.
    pub windows: GmWindows,
    /// Scan bounds.
    pub limits: ScanLimits,
    /// Ring head to start from instead of the image's RING_HEAD: the tail of the workload of the
    /// same context still queued or running (a lite restore), whose write-back has not happened.
    pub resume_head: Option<u32>,
}

/// A workload ready to be shadowed into a host context and queued.
#[derive(Debug)]
pub struct Workload {
    /// The descriptor as submitted.
    pub desc: ContextDescriptor,
    /// The guest context's ring, roots and workaround pointers.
    pub guest: GuestContext,
    /// The guest's PPGTT root (pinned in the vGPU's [`ShadowPpgtt`] until completion).
    pub root: PpgttRoot,
    /// Its shadow, for the shadow context's PDP registers.
    pub shadow_root: ShadowRoot,
    /// The scanned ring and batches.
    pub ring: ScannedWorkload,
    /// The scanned workaround stream (render engine), if the context has one.
    pub wa: Option<ScannedWorkload>,
}

/// Why a submitted context cannot run. The vGPU reports it as a hang of that engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The descriptor names an addressing mode without a page-table format.
    #[error("descriptor: {0}")]
    Descriptor(#[from] DescriptorError),
    /// The context image is unreadable or its ring registers are invalid.
    #[error("context: {0}")]
    Context(#[from] ContextError),
    /// Its page tables cannot be shadowed.
    #[error("ppgtt: {0}")]
    Ppgtt(#[from] PpgttError),
    /// The ring or a batch failed the scan.
    #[error("ring: {0}")]
    Ring(ScanError),
    /// The workaround batches failed to copy or scan.
    #[error("workaround batch: {0}")]
    WaBatch(String),
    /// A page-table root load (MI_LOAD_REGISTER_IMM of PDPn) that cannot be pointed at the shadow.
    #[error("{stream} dword {dword:#x}: page-table root load: {why}")]
    RootLoad {
        /// "ring", "batch" or "workaround batch".
        stream: &'static str,
        /// Dword index of the LRI in its buffer (buffer 0 is the ring).
        dword: usize,
        /// Why it is refused.
        why: &'static str,
    },
}

/// Creates the workload for descriptor `desc` (already validated by
/// [`VirtualExeclist::write_elsp`](super::VirtualExeclist::write_elsp)). On success the root is
/// pinned in `ppgtt`; unpin it when the workload completes or is dropped.
pub fn create_workload<M, G, H>(
    mem: &M,
    ggtt: &G,
    ppgtt: &mut ShadowPpgtt,
    host: &mut H,
    desc: ContextDescriptor,
    p: &WorkloadParams,
) -> Result<Workload, WorkloadError>
where
    M: GuestMemory + ?Sized,
    G: GmTranslate,
    H: DmaMapper + ShadowMemory + ?Sized,
{
    let mut guest = read_guest_context(mem, ggtt, &p.windows, p.engine, p.gen, desc.lrca())?;
    if let Some(head) = p.resume_head.filter(|&h| h < guest.ring.ring.size && h % 8 == 0) {
        guest.ring.ring.head = head;
    }
    let root = match desc.addressing_mode() {
        AddressingMode::Legacy64 => PpgttRoot::L4(guest.pdps[0]),
        AddressingMode::Legacy32 => PpgttRoot::L3(guest.pdps),
        mode => return Err(DescriptorError::AddressingMode(mode).into()),
    };
    let shadow_root = ppgtt.pin(mem, host, root)?;
    let scanned = scan_all(mem, ggtt, ppgtt, root, &guest, p).and_then(|(mut ring, mut wa)| {
        patch_root_loads(&mut ring, "ring", p.engine, root, shadow_root)?;
        if let Some(wa) = wa.as_mut() {
            patch_root_loads(wa, "workaround batch", p.engine, root, shadow_root)?;
        }
        Ok((ring, wa))
    });
    match scanned {
        Ok((ring, wa)) => Ok(Workload { desc, guest, root, shadow_root, ring, wa }),
        Err(e) => {
            // Not running: give the pin back (it was taken just above, so this cannot fail).
            let _ = ppgtt.unpin(host, root);
            Err(e)
        }
    }
}

/// Points every page-table root load of a scanned stream at the shadow tables, as GVT-g does: on
/// the hardware the engine would walk whatever tables the loaded value names. A load must set
/// whole roots in one MI_LOAD_REGISTER_IMM (the upper and lower dword of PDP0 for a 4-level
/// context, of all four PDPs for a legacy 3-level one, as i915 emits them) to the context's own
/// root: the scanner read the stream's PPGTT batches through that root, so a load of another one
/// would make the engine fetch something else than what was scanned. Anything else is refused.
fn patch_root_loads(
    w: &mut ScannedWorkload,
    stream: &'static str,
    engine: Engine,
    root: PpgttRoot,
    shadow: ShadowRoot,
) -> Result<(), WorkloadError> {
    let loads = std::mem::take(&mut w.root_loads);
    let pdp_base = engine.mmio_base() + crate::hw::reg::ring::PDP0_LDW;
    let mut i = 0;
    while let Some(first) = loads.get(i) {
        let group: Vec<_> =
            loads.iter().skip(i).take_while(|l| (l.buffer, l.cmd) == (first.buffer, first.cmd)).copied().collect();
        i += group.len();
        let refuse = |why| WorkloadError::RootLoad { stream, dword: first.cmd, why };
        // Per PDP n: the value dwords of its lower and upper halves.
        let mut halves = [[None::<usize>; 2]; 4];
        for l in &group {
            let off = l.reg.checked_sub(pdp_base).filter(|o| *o < 32).ok_or(refuse("not a PDP register"))?;
            let (n, upper) = ((off / 8) as usize, off % 8 == 4);
            let slot = halves.get_mut(n).and_then(|h| h.get_mut(usize::from(upper))).ok_or(refuse("bad PDP"))?;
            if slot.replace(l.dword).is_some() {
                return Err(refuse("the same PDP half loaded twice in one command"));
            }
        }
        let wanted: &[usize] = match root {
            PpgttRoot::L4(_) => &[0],
            PpgttRoot::L3(_) => &[0, 1, 2, 3],
        };
        let loaded: Vec<usize> =
            (0..4).filter(|&n| halves.get(n).is_some_and(|h| h.iter().any(Option::is_some))).collect();
        if loaded != wanted {
            return Err(refuse("it must load the context's whole root (PDP0 for a PML4, all four PDPs otherwise)"));
        }
        let value = |w: &ScannedWorkload, d: usize| w.buffer(first.buffer)?.dwords.get(d).copied().map(u64::from);
        let guest = root.normalized();
        for &n in wanted {
            let Some(&[Some(lo), Some(hi)]) = halves.get(n) else {
                return Err(refuse("both halves of each PDP must be loaded together"));
            };
            let v =
                value(w, lo).zip(value(w, hi)).map(|(l, h)| h << 32 | l).ok_or(refuse("value out of the buffer"))?;
            let own = match guest {
                PpgttRoot::L4(a) => a,
                PpgttRoot::L3(p) => p.get(n).copied().unwrap_or(0),
            };
            if PpgttRoot::L4(v).normalized() != PpgttRoot::L4(own) {
                return Err(refuse(
                    "it names another page table than the context's (batches were scanned through the context's)",
                ));
            }
            let host = shadow.pdps().get(n).copied().unwrap_or(0);
            if !(w.patch(first.buffer, lo, host as u32) && w.patch(first.buffer, hi, (host >> 32) as u32)) {
                return Err(refuse("value out of the buffer"));
            }
        }
    }
    Ok(())
}

/// Copies and scans the batch fetch point `point` of a workload starts (see
/// [`crate::cmd::scan_fetch`]), as the guest's memory and page tables are now, when the engine
/// reaches the start, with its page-table root loads pointed at the shadow. `root` and `shadow`
/// are the workload's, `guest` its context.
#[allow(clippy::too_many_arguments)]
pub fn fetch_batch<M, G>(
    mem: &M,
    ggtt: &G,
    ppgtt: &ShadowPpgtt,
    root: PpgttRoot,
    shadow: ShadowRoot,
    guest: &GuestContext,
    p: &WorkloadParams,
    point: &FetchPoint,
) -> Result<ScannedWorkload, WorkloadError>
where
    M: GuestMemory + ?Sized,
    G: GmTranslate,
{
    let xlate = SplitTranslation { ggtt, ppgtt: ppgtt.translator(root) };
    let params = scan_params(guest, p);
    let mut tree = scan_fetch(mem, &xlate, &params, point, &mut ()).map_err(WorkloadError::Ring)?;
    patch_root_loads(&mut tree, "batch", p.engine, root, shadow)?;
    Ok(tree)
}

/// How a workload's streams are scanned: through its context's PPGTT, index-mode writes into the
/// per-process status page (page 0 of the image, at the LRCA).
fn scan_params(guest: &GuestContext, p: &WorkloadParams) -> ScanParams {
    ScanParams {
        gen: p.gen,
        engine: p.engine,
        windows: p.windows,
        ring: guest.ring.ring,
        surfaces: AddrSpace::Ppgtt,
        hwsp: Some(guest.lrca),
        limits: p.limits,
    }
}

fn scan_all<M, G>(
    mem: &M,
    ggtt: &G,
    ppgtt: &ShadowPpgtt,
    root: PpgttRoot,
    guest: &GuestContext,
    p: &WorkloadParams,
) -> Result<(ScannedWorkload, Option<ScannedWorkload>), WorkloadError>
where
    M: GuestMemory + ?Sized,
    G: GmTranslate,
{
    let xlate = SplitTranslation { ggtt, ppgtt: ppgtt.translator(root) };
    let params = scan_params(guest, p);
    let ring = scan_fetching(mem, &xlate, &params, &mut ()).map_err(WorkloadError::Ring)?;
    let wa = if p.engine == Engine::Rcs && (guest.indirect_ctx.is_some() || guest.bb_per_ctx.is_some()) {
        let mut dwords = Vec::new();
        if let Some((addr, size)) = guest.indirect_ctx {
            dwords.resize((size / 4) as usize, 0u32);
            copy_from_gm(mem, ggtt, AddrSpace::Ggtt, addr, zerocopy::IntoBytes::as_mut_bytes(dwords.as_mut_slice()))
                .map_err(|f| {
                    WorkloadError::WaBatch(format!("indirect context: {}", fault_reason(AddrSpace::Ggtt, f)))
                })?;
            for d in dwords.iter_mut() {
                *d = u32::from_le(*d);
            }
        }
        if let Some(addr) = guest.bb_per_ctx {
            dwords.extend([BB_START_GGTT, addr as u32, (addr >> 32) as u32]);
        }
        Some(scan_dwords(mem, &xlate, &params, dwords).map_err(|e| WorkloadError::WaBatch(e.to_string()))?)
    } else {
        None
    };
    Ok((ring, wa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{GmRange, LinearTranslation, Reason, PAGE_SIZE};
    use crate::context::image::idx;
    use crate::mm::ppgtt::{testing::HostTables, PpgttLimits, Revalidate};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const AP: GmRange = GmRange::new(0x10_0000, 0x20_0000);
    const LRCA: u64 = 0x12_0000;
    const PML4: u64 = 0x30_0000;
    const BATCH_GPA: u64 = 0x38_0000;
    const BATCH_PPGTT: u64 = 0x40_0000;

    struct Guest {
        mem: GuestMemoryMmap<()>,
        ggtt: LinearTranslation,
        host: HostTables,
        ppgtt: ShadowPpgtt,
    }

    fn w32(mem: &GuestMemoryMmap<()>, gpa: u64, dws: &[u32]) {
        for (i, d) in dws.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(gpa + 4 * i as u64)).unwrap();
        }
    }

    /// A 4-level context whose ring starts a PPGTT batch that stores a dword.
    fn guest() -> Guest {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut ggtt = LinearTranslation::new();
        ggtt.map(AddrSpace::Ggtt, AP, GuestAddress(0));
        let state = LRCA - AP.base + PAGE_SIZE;
        w32(&mem, state + 4 * idx::RING_START as u64, &[0x10_0000]);
        w32(&mem, state + 4 * idx::RING_CTL as u64, &[1]);
        w32(&mem, state + 4 * idx::RING_TAIL as u64, &[0x18]);
        w32(&mem, state + 4 * (idx::PDP3_UDW + 14) as u64, &[PML4 as u32]);
        // Ring: BB_START ppgtt, USER_INTERRUPT, NOOP.
        w32(&mem, 0, &[0x1880_0101, BATCH_PPGTT as u32, 0, 0x0100_0000, 0, 0]);
        // PPGTT: PML4 -> PDP -> PD -> PT -> batch page.
        for (t, e) in [(PML4, PML4 + 0x1000), (PML4 + 0x1000, PML4 + 0x2000)] {
            mem.write_obj(e | 3, GuestAddress(t)).unwrap();
        }
        mem.write_obj((PML4 + 0x3000) | 3, GuestAddress(PML4 + 0x2000 + 8 * 2)).unwrap();
        mem.write_obj(BATCH_GPA | 3, GuestAddress(PML4 + 0x3000)).unwrap();
        // Batch: MI_STORE_DATA_IMM (PPGTT) 42 to 0x1000, MI_BATCH_BUFFER_END.
        w32(&mem, BATCH_GPA, &[0x1000_0002, 0x1000, 0, 42, 0x0500_0000, 0]);
        let mut host = HostTables::default();
        let ppgtt = ShadowPpgtt::new(&mut host, PpgttLimits::default(), Box::new(Revalidate)).unwrap();
        Guest { mem, ggtt, host, ppgtt }
    }

    fn params(engine: Engine) -> WorkloadParams {
        WorkloadParams {
            gen: Gen::Gen9,
            engine,
            windows: GmWindows { aperture: AP, hidden: GmRange::default() },
            limits: ScanLimits::default(),
            resume_head: None,
        }
    }

    fn fetch(
        g: &Guest,
        w: &Workload,
        p: &WorkloadParams,
        point: &FetchPoint,
    ) -> Result<ScannedWorkload, WorkloadError> {
        fetch_batch(&g.mem, &g.ggtt, &g.ppgtt, w.root, w.shadow_root, &w.guest, p, point)
    }

    fn desc() -> ContextDescriptor {
        ContextDescriptor(LRCA | (3 << 3) | (1 << 8) | 1)
    }

    #[test]
    fn ring_and_ppgtt_batch_are_scanned_with_the_root_pinned() {
        let mut g = guest();
        let w = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Bcs)).unwrap();
        assert_eq!(w.root, PpgttRoot::L4(PML4));
        assert_eq!(w.guest.ring.ring.tail, 0x18);
        // The batch is fetched when the engine reaches its start, not with the ring.
        assert!(w.ring.batches.is_empty());
        let point = FetchPoint { buffer: 0, dword: 0, space: AddrSpace::Ppgtt, gma: BATCH_PPGTT, level: 1 };
        assert_eq!(w.ring.fetches, [point]);
        // The guest changes it before then: the fetch copies what is there at that moment.
        w32(&g.mem, BATCH_GPA + 12, &[43]);
        let tree = fetch(&g, &w, &params(Engine::Bcs), &point).unwrap();
        assert_eq!(tree.batches.len(), 1);
        assert_eq!(&tree.batches[0].dwords[..4], &[0x1000_0002, 0x1000, 0, 43]);
        assert!(w.ring.events.contains(crate::cmd::Events::USER_INTERRUPT));
        assert!(w.wa.is_none());
        assert_eq!(g.host.walk(w.shadow_root, BATCH_PPGTT + 4), Some(HostTables::host_of(BATCH_GPA + 4)));
        g.ppgtt.unpin(&mut g.host, w.root).unwrap();
    }

    #[test]
    fn render_workaround_batches_are_scanned() {
        let mut g = guest();
        let state = LRCA - AP.base + PAGE_SIZE;
        w32(&g.mem, state + 4 * idx::INDIRECT_CTX as u64, &[0x10_5000 | 1]);
        w32(&g.mem, state + 4 * idx::BB_PER_CTX_PTR as u64, &[0x10_6000 | 1]);
        w32(&g.mem, 0x5000, &[0x1100_0001, 0x2600, 7]); // LRI of CS_GPR0
        w32(&g.mem, 0x6000, &[0x0500_0000]);
        let w = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Rcs)).unwrap();
        let wa = w.wa.unwrap();
        assert_eq!(wa.ring.dwords[..3], [0x1100_0001, 0x2600, 7]);
        assert_eq!(wa.ring.dwords[16..19], [BB_START_GGTT, 0x10_6000, 0]);
        assert_eq!(wa.batches.len(), 1);
        // A forbidden register in the indirect context fails the workload and releases the pin.
        w32(&g.mem, 0x5000, &[0x1100_0001, 0x2080, 7]); // RING_HWS_PGA
        g.ppgtt.unpin(&mut g.host, w.root).unwrap();
        let e = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Rcs));
        assert!(matches!(e, Err(WorkloadError::WaBatch(_))), "{e:?}");
        assert_eq!(g.ppgtt.unpin(&mut g.host, PpgttRoot::L4(PML4)), Err(PpgttError::NotPinned(PpgttRoot::L4(PML4))));
    }

    #[test]
    fn root_loads_point_at_the_shadow_tables() {
        let mut g = guest();
        let lri = |pairs: &[(u32, u32)]| {
            let mut v = vec![0x1100_0000 | (2 * pairs.len() as u32 - 1)];
            pairs.iter().for_each(|&(r, x)| v.extend([r, x]));
            v
        };
        let ring_with = |g: &Guest, cmds: Vec<u32>| {
            let mut all = cmds;
            all.extend([0x1880_0101, BATCH_PPGTT as u32, 0, 0x0100_0000]);
            if all.len() % 2 == 1 {
                all.push(0);
            }
            w32(&g.mem, 0, &all);
            let state = LRCA - AP.base + PAGE_SIZE;
            w32(&g.mem, state + 4 * idx::RING_TAIL as u64, &[4 * all.len() as u32]);
        };
        // i915's form: PDP0's upper then lower dword, the context's own PML4.
        ring_with(&g, lri(&[(0x22274, 0), (0x22270, PML4 as u32)]));
        let w = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Bcs)).unwrap();
        let shadow = w.shadow_root.pdps()[0];
        assert_eq!(&w.ring.ring.dwords[1..5], &[0x22274, (shadow >> 32) as u32, 0x22270, shadow as u32]);
        assert!(w.ring.root_loads.is_empty());
        g.ppgtt.unpin(&mut g.host, w.root).unwrap();
        // Another table, half a root, a root of another PDP: refused, and nothing stays pinned.
        for cmds in [
            lri(&[(0x22274, 0), (0x22270, 0x3f_0000)]),
            lri(&[(0x22270, PML4 as u32)]),
            lri(&[(0x22274, 0), (0x22270, PML4 as u32), (0x22278, 0), (0x2227c, 0)]),
        ] {
            ring_with(&g, cmds);
            let e = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Bcs));
            assert!(matches!(e, Err(WorkloadError::RootLoad { .. })), "{e:?}");
            let root = PpgttRoot::L4(PML4);
            assert_eq!(g.ppgtt.unpin(&mut g.host, root), Err(PpgttError::NotPinned(root)));
        }
        // From a non-privileged (PPGTT) batch the hardware drops a root load: the copy does too.
        ring_with(&g, vec![]);
        w32(&g.mem, BATCH_GPA, &[0x1100_0003, 0x22274, 0, 0x22270, 0x3f_0000, 0x0500_0000]);
        let w = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Bcs)).unwrap();
        let tree = fetch(&g, &w, &params(Engine::Bcs), &w.ring.fetches[0]).unwrap();
        assert_eq!(&tree.batches[0].dwords[..6], &[0, 0, 0, 0, 0, 0x0500_0000]);
        g.ppgtt.unpin(&mut g.host, w.root).unwrap();
    }

    #[test]
    fn hostile_contexts_fail_cleanly() {
        let mut g = guest();
        // The batch moves to an unmapped PPGTT address: refused when the engine reaches it.
        w32(&g.mem, 4, &[0x50_0000]);
        let w = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Bcs)).unwrap();
        let e = fetch(&g, &w, &params(Engine::Bcs), &w.ring.fetches[0]).unwrap_err();
        assert!(matches!(&e, WorkloadError::Ring(s) if matches!(s.reason, Reason::Unmapped { .. })), "{e}");
        g.ppgtt.unpin(&mut g.host, w.root).unwrap();
        // A root outside guest memory.
        let state = LRCA - AP.base + PAGE_SIZE;
        w32(&g.mem, state + 4 * (idx::PDP3_UDW + 14) as u64, &[0x4000_0000]);
        let e = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Bcs));
        assert_eq!(e.unwrap_err(), WorkloadError::Ppgtt(PpgttError::BadRoot(0x4000_0000)));
        // A ring outside the vGPU.
        w32(&g.mem, state + 4 * idx::RING_START as u64, &[0x1000]);
        let e = create_workload(&g.mem, &g.ggtt, &mut g.ppgtt, &mut g.host, desc(), &params(Engine::Bcs));
        assert!(matches!(e, Err(WorkloadError::Context(ContextError::OutsideWindows { .. }))));
        // An advanced addressing mode.
        let e = create_workload(
            &g.mem,
            &g.ggtt,
            &mut g.ppgtt,
            &mut g.host,
            ContextDescriptor(LRCA | 0x101),
            &params(Engine::Bcs),
        );
        assert!(matches!(e, Err(WorkloadError::Context(_)) | Err(WorkloadError::Descriptor(_))));
        let root = PpgttRoot::L4(PML4);
        assert_eq!(g.ppgtt.unpin(&mut g.host, root), Err(PpgttError::NotPinned(root)), "failures leave no pin");
    }
}
