//! A real Gen8/Gen9 iGPU behind VFIO as the [`HostGpu`]: the backend owns the whole GGTT, puts
//! the shadow buffers and context images in DMA memory it maps there, submits through the
//! engines' ELSP and waits for the completion event in the CSB; a workload that does not complete
//! within the poll timeout is a hang, and the engine is reset through GDRST.
//!
//! Preemption is i915's on Gen9 ("preempt to idle"): when the scheduler asks, the backend submits
//! a preemption context (an image whose ring is empty) in ELSP port 0; the engine saves the running
//! context at its next preemption point, reports it PREEMPTED in the CSB, runs the empty context
//! to completion and idles. The saved image holds the ring head and batch state, so submitting it
//! again resumes the workload.
//!
//! The register and DMA accesses go through two small traits, [`Bar0`] and [`DmaSpace`]:
//! [`VfioBar0`] and [`VfioDma`] implement them over `vfio-ioctls` for a device bound to vfio-pci,
//! and the software GPU's register-level model implements them in tests (no Intel GPU here).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vm_memory::GuestAddress;
use zerocopy::IntoBytes;

use super::{placement, EngineLayout, GuestDma, HostError, HostGpu, HostJob, RunReport, VgpuMemory};
use crate::cmd::{page_chunks, PAGE_SIZE};
use crate::context::image::idx;
use crate::hw::{Engine, EngineMask, Gen};
use crate::mm::{DmaMapper, HostGgtt, ShadowMemory};

use crate::execlist::reg;
use crate::hw::bar0::{GDRST, GTT_OFFSET};
/// Bits of guest physical address one attached guest's DMA window covers.
const SLOT_SHIFT: u32 = 40;

/// 32-bit access to the GPU's BAR0.
pub trait Bar0: Send + Sync {
    /// Reads the register at `off`.
    fn read32(&self, off: u64) -> u32;
    /// Writes the register at `off`.
    fn write32(&self, off: u64, v: u32);
}

/// Memory the GPU reaches by DMA: pages the backend allocates, and attached guests' memory at
/// `slot << 40 | gpa`.
pub trait DmaSpace: Send + Sync {
    /// A zeroed page; its I/O virtual address.
    fn alloc_page(&self) -> Option<u64>;
    /// Frees a page from `alloc_page`.
    fn free_page(&self, iova: u64);
    /// Writes backend-owned memory.
    fn write(&self, iova: u64, data: &[u8]) -> bool;
    /// Reads backend-owned memory.
    fn read(&self, iova: u64, buf: &mut [u8]) -> bool;
    /// Maps a guest's memory for DMA; returns its slot (1-based).
    fn attach_guest(&self, guest: Arc<dyn GuestDma>) -> Option<usize>;
    /// Unmaps a guest.
    fn detach_guest(&self, slot: usize);
}

/// How long a workload may run before it is declared hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Context IDs (upper descriptor dword) of the workload and of the preemption context.
const WORK_ID: u32 = 1;
const PREEMPT_ID: u32 = 2;
/// Offset of the preemption context's image from the workload's (after its 22 pages).
const PREEMPT_CTX_OFF: u64 = 0x2_0000;
/// CSB status bits.
const CSB_PREEMPTED: u32 = 1 << 1;
const CSB_COMPLETE: u32 = 1 << 4;

struct EngineState {
    /// DMA page behind each backed GGTT page of the engine's shadow area, by GGTT page index.
    mapped: HashMap<u64, u64>,
}

/// The VFIO backend.
pub struct VfioGpu<B, D: DmaSpace> {
    bar: Arc<B>,
    dma: Arc<D>,
    gen: Gen,
    engines: EngineMask,
    shadow_base: u64,
    timeout: Duration,
    state: Vec<Mutex<EngineState>>,
    /// Per engine: [`HostGpu::abort`] asked the running workload to stop.
    aborts: Vec<AtomicBool>,
}

impl<B, D: DmaSpace> std::fmt::Debug for VfioGpu<B, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioGpu").field("gen", &self.gen).field("engines", &self.engines).finish()
    }
}

fn write_pte<B: Bar0>(bar: &B, index: u64, pte: u64) {
    bar.write32(GTT_OFFSET + index * 8, pte as u32);
    bar.write32(GTT_OFFSET + index * 8 + 4, (pte >> 32) as u32);
}

impl<B: Bar0, D: DmaSpace> VfioGpu<B, D> {
    /// A backend for a GPU of `gen` with `engines`, whose shadow areas start at GGTT
    /// `shadow_base` (5 × 64 MiB no vGPU window may overlap).
    pub fn new(bar: Arc<B>, dma: Arc<D>, gen: Gen, engines: EngineMask, shadow_base: u64) -> Self {
        let state = Engine::ALL.iter().map(|_| Mutex::new(EngineState { mapped: HashMap::new() })).collect();
        let aborts = Engine::ALL.iter().map(|_| AtomicBool::new(false)).collect();
        VfioGpu { bar, dma, gen, engines, shadow_base, timeout: DEFAULT_TIMEOUT, state, aborts }
    }

    /// Sets the hang timeout.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Writes `data` at GGTT `gma` of the engine's shadow area, backing new pages with DMA pages.
    fn stage(&self, st: &mut EngineState, gma: u64, data: &[u8]) -> Result<(), String> {
        for (at, r) in page_chunks(gma, data.len()) {
            let index = at / PAGE_SIZE;
            let page = match st.mapped.get(&index) {
                Some(&p) => p,
                None => {
                    let p = self.dma.alloc_page().ok_or("out of DMA memory")?;
                    st.mapped.insert(index, p);
                    write_pte(&*self.bar, index, p | 1);
                    p
                }
            };
            let iova = page + at % PAGE_SIZE;
            if !self.dma.write(iova, data.get(r).unwrap_or_default()) {
                return Err(format!("DMA write at {iova:#x} failed"));
            }
        }
        Ok(())
    }

    /// Writes one context to `engine`'s ELSP, in port 0 (port 1 empty).
    fn submit(&self, engine: Engine, desc: u64, id: u32) {
        let base = u64::from(engine.mmio_base());
        for v in [0, 0, id, desc as u32] {
            self.bar.write32(base + u64::from(reg::ELSP), v);
        }
    }

    /// Preempts `engine` to idle: stages the preemption context (a ring-context template whose
    /// ring is empty) beside the workload's image at `lrca` and submits it.
    fn submit_preempt(&self, st: &mut EngineState, engine: Engine, lrca: u64) -> Result<(), String> {
        let at = lrca + PREEMPT_CTX_OFF;
        let layout = placement::layout(self.shadow_base, engine);
        let mut ctx = crate::context::ShadowContext::with_blank_clean(self.gen, engine);
        ctx.prepare_recording(layout.ring_start, PAGE_SIZE as u32);
        // Restore inhibit (nothing of an engine context to load), an empty ring: the status page
        // and the register-state page are all the engine reads.
        let image = ctx.image();
        self.stage(st, at, image.get(..2 * 1024).unwrap_or_default().as_bytes())?;
        self.submit(engine, at | (3 << 3) | (1 << 8) | 1, PREEMPT_ID);
        Ok(())
    }

    /// Reads what the engine left at GGTT `gma` of its shadow area.
    fn read_back(&self, st: &EngineState, gma: u64, buf: &mut [u8]) -> bool {
        page_chunks(gma, buf.len()).all(|(at, r)| {
            let page = st.mapped.get(&(at / PAGE_SIZE));
            match (page, buf.get_mut(r)) {
                (Some(&p), Some(chunk)) => self.dma.read(p + at % PAGE_SIZE, chunk),
                _ => false,
            }
        })
    }
}

impl<B, D: DmaSpace> Drop for VfioGpu<B, D> {
    fn drop(&mut self) {
        for st in &self.state {
            for (_, p) in st.lock().mapped.drain() {
                self.dma.free_page(p);
            }
        }
    }
}

impl<B: Bar0 + 'static, D: DmaSpace + 'static> HostGpu for VfioGpu<B, D> {
    fn gen(&self) -> Gen {
        self.gen
    }

    fn engines(&self) -> EngineMask {
        self.engines
    }

    fn layout(&self, engine: Engine) -> EngineLayout {
        placement::layout(self.shadow_base, engine)
    }

    fn attach_vgpu(&self, guest: Arc<dyn GuestDma>) -> Result<Box<dyn VgpuMemory>, HostError> {
        let slot = self.dma.attach_guest(guest.clone()).ok_or_else(|| HostError::Attach("no DMA slot".into()))?;
        let scratch = self.dma.alloc_page().ok_or_else(|| HostError::Attach("out of DMA memory".into()))?;
        Ok(Box::new(VfioVgpuMemory {
            bar: self.bar.clone(),
            dma: self.dma.clone(),
            guest,
            slot,
            scratch,
            tables: HashSet::new(),
        }))
    }

    fn run(&self, engine: Engine, mut job: HostJob<'_>) -> Result<RunReport, HostError> {
        if !self.engines.has(engine) {
            return Err(HostError::NoEngine(engine));
        }
        let mut st = self.state.get(engine.index()).ok_or(HostError::NoEngine(engine))?.lock();
        let place_err = |why| HostError::Placement { engine, why };
        let abort = self.aborts.get(engine.index());
        // An abort asked for before this run (of a run that ended meanwhile) is not for it.
        if let Some(a) = abort {
            a.store(false, Ordering::Release);
        }
        // No trap sequences yet: every batch is fetched at dispatch, before the engine starts.
        placement::fetch_now(&mut job).map_err(|why| HostError::Refused { engine, engine_ns: 0, why })?;
        placement::place(self.shadow_base, engine, &mut job, &mut |gma, dw| self.stage(&mut st, gma, dw.as_bytes()))
            .map_err(place_err)?;
        // The context image goes to the engine's context area; the engine loads it from there.
        let lrca = placement::area_base(self.shadow_base, engine) + placement::CONTEXT_OFF;
        let (ring, eng) = job.context.parts();
        let before = ring.get(1024 + idx::CTX_TIMESTAMP).copied().unwrap_or(0);
        self.stage(&mut st, lrca, ring.as_bytes()).map_err(place_err)?;
        self.stage(&mut st, lrca + ring.as_bytes().len() as u64, eng.as_bytes()).map_err(place_err)?;

        let base = u64::from(engine.mmio_base());
        let csb_ptr = |bar: &B| bar.read32(base + u64::from(reg::CSB_PTR)) & 7;
        let wp0 = csb_ptr(&self.bar);
        let mode = if job.legacy32 { 1 } else { 3 };
        let desc = lrca | (mode << 3) | (1 << 8) | 1;
        self.submit(engine, desc, WORK_ID);
        let timeout = job.timeout_ns.map_or(self.timeout, Duration::from_nanos);
        // Wait for the workload's complete event, or, once preempted, for the preemption
        // context's.
        let t0 = Instant::now();
        let mut seen = wp0;
        let (mut preempting, mut preempted, mut completed) = (false, false, false);
        loop {
            let wp = csb_ptr(&self.bar);
            while seen != wp {
                seen = if seen >= 5 { 0 } else { seen + 1 };
                let at = base + u64::from(reg::CSB) + 8 * u64::from(seen);
                let (lo, id) = (self.bar.read32(at), self.bar.read32(at + 4));
                completed |= id == WORK_ID && lo & CSB_COMPLETE != 0;
                preempted |= id == WORK_ID && lo & CSB_PREEMPTED != 0 && !completed;
                if id == PREEMPT_ID && lo & CSB_COMPLETE != 0 {
                    preempting = false;
                }
            }
            if (completed || preempted) && !preempting {
                break;
            }
            let used = t0.elapsed();
            if !preempting && !preempted && job.preempt.is_some_and(|stop| stop(used.as_nanos() as u64)) {
                self.submit_preempt(&mut st, engine, lrca).map_err(place_err)?;
                preempting = true;
            }
            // The guest reset the engine: stop waiting; the scheduler resets it through GDRST,
            // which stops what it runs.
            if abort.is_some_and(|a| a.load(Ordering::Acquire)) {
                return Err(HostError::Aborted { engine });
            }
            if used > timeout {
                return Err(HostError::Hang {
                    engine,
                    engine_ns: used.as_nanos() as u64,
                    at: lrca,
                    why: "no completion event within the timeout",
                });
            }
            std::thread::yield_now();
        }
        self.bar.write32(base + u64::from(reg::CSB_PTR), 0x0700_0000 | u32::from(seen as u8) << 8);
        let (ring, eng) = job.context.parts_mut();
        let ring_len = ring.as_bytes().len() as u64;
        if !self.read_back(&st, lrca, ring.as_mut_bytes()) || !self.read_back(&st, lrca + ring_len, eng.as_mut_bytes())
        {
            return Err(HostError::Fault { engine, at: lrca, why: "context image read-back failed".into() });
        }
        let after = job.context.parts().0.get(1024 + idx::CTX_TIMESTAMP).copied().unwrap_or(0);
        let engine_ns = self.gen.timestamp_ns(u64::from(after.wrapping_sub(before)));
        Ok(RunReport { engine_ns, preempted: preempted && !completed, ..RunReport::default() })
    }

    fn reset_engine(&self, engine: Engine) {
        let bit = engine.gdrst_bit();
        self.bar.write32(GDRST, bit);
        let t0 = Instant::now();
        while self.bar.read32(GDRST) & bit != 0 && t0.elapsed() < Duration::from_millis(100) {
            std::thread::yield_now();
        }
        // The CSB pointers restart after a reset.
        let base = u64::from(engine.mmio_base());
        self.bar.write32(base + u64::from(reg::CSB_PTR), 0xffff_0707);
    }

    fn abort(&self, engine: Engine) {
        if let Some(a) = self.aborts.get(engine.index()) {
            a.store(true, Ordering::Release);
        }
    }

    fn read_reg(&self, _engine: Engine, reg: u32) -> u32 {
        self.bar.read32(u64::from(reg))
    }

    fn write_reg(&self, _engine: Engine, reg: u32, value: u32) {
        self.bar.write32(u64::from(reg), value);
    }
}

/// One vGPU's memory on the VFIO backend.
struct VfioVgpuMemory<B, D: DmaSpace> {
    bar: Arc<B>,
    dma: Arc<D>,
    guest: Arc<dyn GuestDma>,
    slot: usize,
    scratch: u64,
    tables: HashSet<u64>,
}

impl<B, D: DmaSpace> std::fmt::Debug for VfioVgpuMemory<B, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioVgpuMemory").field("slot", &self.slot).finish()
    }
}

impl<B, D: DmaSpace> Drop for VfioVgpuMemory<B, D> {
    fn drop(&mut self) {
        for t in self.tables.drain() {
            self.dma.free_page(t);
        }
        self.dma.free_page(self.scratch);
        self.dma.detach_guest(self.slot);
    }
}

impl<B, D: DmaSpace> DmaMapper for VfioVgpuMemory<B, D> {
    fn map_page(&mut self, gpa: GuestAddress) -> Result<u64, String> {
        if gpa.0 >> SLOT_SHIFT != 0 || !self.guest.dma_contains(gpa.0, PAGE_SIZE) {
            return Err(format!("{:#x} is not guest memory", gpa.0));
        }
        Ok((self.slot as u64) << SLOT_SHIFT | gpa.0)
    }

    fn unmap_page(&mut self, _host: u64) {}
}

impl<B, D: DmaSpace> ShadowMemory for VfioVgpuMemory<B, D> {
    fn alloc_table(&mut self) -> Result<u64, String> {
        let t = self.dma.alloc_page().ok_or("out of DMA memory")?;
        self.tables.insert(t);
        Ok(t)
    }

    fn free_table(&mut self, table: u64) {
        if self.tables.remove(&table) {
            self.dma.free_page(table);
        }
    }

    fn write_entries(&mut self, table: u64, first: usize, entries: &[u64]) {
        if self.tables.contains(&table) {
            self.dma.write(table + 8 * first as u64, entries.as_bytes());
        }
    }
}

/// Writes the host GGTT through BAR0.
struct BarGgtt<B>(Arc<B>);

impl<B: Bar0> HostGgtt for BarGgtt<B> {
    fn write_pte(&mut self, index: u64, pte: u64) {
        write_pte(&*self.0, index, pte);
    }
}

impl<B: Bar0 + 'static, D: DmaSpace> VgpuMemory for VfioVgpuMemory<B, D> {
    fn scratch_page(&self) -> u64 {
        self.scratch
    }

    fn ggtt_writer(&self) -> Box<dyn HostGgtt + Send> {
        Box::new(BarGgtt(self.bar.clone()))
    }
}

/// BAR0 of a device bound to vfio-pci (region 0).
pub struct VfioBar0(Arc<vfio_ioctls::VfioDevice>);

/// Opens the iGPU bound to vfio-pci at `sysfs` (e.g. `/sys/bus/pci/devices/0000:00:02.0`) in a new
/// VFIO container: its BAR0 and the container's DMA space, for [`VfioGpu::new`].
pub fn open(sysfs: &std::path::Path) -> Result<(VfioBar0, VfioDma), HostError> {
    let err = |e: vfio_ioctls::VfioError| HostError::Attach(format!("VFIO: {e}"));
    let container = Arc::new(vfio_ioctls::VfioContainer::new(None).map_err(err)?);
    let ops: Arc<dyn vfio_ioctls::VfioOps> = container.clone();
    let device = vfio_ioctls::VfioDevice::new(sysfs, ops, false).map_err(err)?;
    Ok((VfioBar0(Arc::new(device)), VfioDma::new(container)))
}

impl Bar0 for VfioBar0 {
    fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.0.region_read(0, &mut b, off);
        u32::from_le_bytes(b)
    }

    fn write32(&self, off: u64, v: u32) {
        self.0.region_write(0, &v.to_le_bytes(), off);
    }
}

/// A DMA page the device reaches through the IOMMU.
#[repr(C, align(4096))]
struct DmaPage([u8; 4096]);

/// A guest's memory and the IOVA ranges mapped for it.
type AttachedGuest = (Arc<dyn GuestDma>, Vec<(u64, u64)>);

#[derive(Default)]
struct DmaInner {
    pages: std::collections::HashMap<u64, Box<DmaPage>>,
    free_iovas: Vec<u64>,
    next_iova: u64,
    guests: Vec<Option<AttachedGuest>>,
}

/// DMA memory through a VFIO container: backend pages are page-aligned heap pages mapped at
/// IOVAs from `56 << 40`; guest memory is mapped at `slot << 40 | gpa` from its host mapping.
pub struct VfioDma {
    container: Arc<vfio_ioctls::VfioContainer>,
    inner: Mutex<DmaInner>,
}

impl VfioDma {
    fn new(container: Arc<vfio_ioctls::VfioContainer>) -> Self {
        let inner = DmaInner { next_iova: 56 << SLOT_SHIFT, guests: vec![None; 55], ..DmaInner::default() };
        VfioDma { container, inner: Mutex::new(inner) }
    }
}

impl DmaSpace for VfioDma {
    fn alloc_page(&self) -> Option<u64> {
        let mut g = self.inner.lock();
        let iova = match g.free_iovas.pop() {
            Some(i) => i,
            None => {
                let i = g.next_iova;
                g.next_iova += PAGE_SIZE;
                i
            }
        };
        let mut page = Box::new(DmaPage([0; 4096]));
        let ptr = page.0.as_mut_ptr();
        // SAFETY: the page is heap memory owned by `pages` until `free_page` unmaps it first; the
        // IOVA range is one page this pool allocated and nothing else maps.
        unsafe { self.container.vfio_dma_map(iova, PAGE_SIZE as usize, ptr) }.ok()?;
        g.pages.insert(iova, page);
        Some(iova)
    }

    fn free_page(&self, iova: u64) {
        let mut g = self.inner.lock();
        if g.pages.contains_key(&iova) && self.container.vfio_dma_unmap(iova, PAGE_SIZE as usize).is_ok() {
            g.pages.remove(&iova);
            g.free_iovas.push(iova);
        }
    }

    fn write(&self, iova: u64, data: &[u8]) -> bool {
        let mut g = self.inner.lock();
        let off = (iova % PAGE_SIZE) as usize;
        match g.pages.get_mut(&(iova - iova % PAGE_SIZE)).and_then(|p| p.0.get_mut(off..off + data.len())) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    fn read(&self, iova: u64, buf: &mut [u8]) -> bool {
        let g = self.inner.lock();
        let off = (iova % PAGE_SIZE) as usize;
        match g.pages.get(&(iova - iova % PAGE_SIZE)).and_then(|p| p.0.get(off..off + buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    fn attach_guest(&self, guest: Arc<dyn GuestDma>) -> Option<usize> {
        let mut g = self.inner.lock();
        let i = g.guests.iter().position(Option::is_none)?;
        let slot = i + 1;
        let mut mapped = Vec::new();
        for (gpa, hva, len) in guest.host_regions() {
            let iova = (slot as u64) << SLOT_SHIFT | gpa;
            // SAFETY: the guest memory stays mapped while its `GuestDma` lives; the Arc is kept in
            // `guests` until `detach_guest` unmaps these ranges.
            if unsafe { self.container.vfio_dma_map(iova, len as usize, hva as *mut u8) }.is_ok() {
                mapped.push((iova, len));
            }
        }
        *g.guests.get_mut(i)? = Some((guest, mapped));
        Some(slot)
    }

    fn detach_guest(&self, slot: usize) {
        let mut g = self.inner.lock();
        if let Some((_, ranges)) = slot.checked_sub(1).and_then(|i| g.guests.get_mut(i)).and_then(Option::take) {
            for (iova, len) in ranges {
                let _ = self.container.vfio_dma_unmap(iova, len as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::emit::CmdBuf;
    use crate::cmd::{AddrSpace, BufferKind, FetchPoint, ScannedWorkload, ShadowBuffer};
    use crate::context::ShadowContext;
    use crate::host::placement::{FetchedBatches, Fetcher};
    use crate::host::sim::memory::SimMemory;
    use crate::host::sim::testing::ring_workload;
    use crate::host::sim::{SimConfig, SimGpu};
    use vm_memory::{Bytes, GuestMemoryMmap};

    /// BAR0 of the software GPU's register-level model.
    struct SimBar(Arc<SimGpu>);
    impl Bar0 for SimBar {
        fn read32(&self, off: u64) -> u32 {
            self.0.mmio_read(off)
        }
        fn write32(&self, off: u64, v: u32) {
            self.0.mmio_write(off, v)
        }
    }

    struct SimDma(Arc<SimMemory>);
    impl DmaSpace for SimDma {
        fn alloc_page(&self) -> Option<u64> {
            self.0.alloc_page()
        }
        fn free_page(&self, iova: u64) {
            self.0.free_page(iova)
        }
        fn write(&self, iova: u64, data: &[u8]) -> bool {
            self.0.write_host(iova, data)
        }
        fn read(&self, iova: u64, buf: &mut [u8]) -> bool {
            self.0.read_host(iova, buf)
        }
        fn attach_guest(&self, guest: Arc<dyn GuestDma>) -> Option<usize> {
            self.0.attach(guest)
        }
        fn detach_guest(&self, slot: usize) {
            self.0.detach(slot)
        }
    }

    const WIN: u64 = 0x100_0000;

    fn run(gpu: &VfioGpu<SimBar, SimDma>, engine: Engine, ring: &CmdBuf) -> Result<RunReport, HostError> {
        let mut ctx = ShadowContext::with_blank_clean(Gen::Gen9, engine);
        let mut w = ring_workload(&mut ctx, &gpu.layout(engine), ring);
        gpu.run(engine, HostJob::new(&mut w, None, &mut ctx, false))
    }

    #[test]
    fn the_vfio_backend_drives_the_register_level_model() {
        let sim = Arc::new(SimGpu::new(SimConfig::default()));
        let dma = Arc::new(SimDma(sim.memory().clone()));
        let gpu = VfioGpu::new(Arc::new(SimBar(sim.clone())), dma, Gen::Gen9, sim.config().engines, 1 << 30)
            .with_timeout(Duration::from_millis(200));
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut vm = gpu.attach_vgpu(Arc::new(guest.clone())).unwrap();
        let mut ggtt = vm.ggtt_writer();
        for i in 0..16u64 {
            let h = vm.map_page(GuestAddress(i * 4096)).unwrap();
            ggtt.write_pte(WIN / 4096 + i, h | 1);
        }
        // Through BAR0: GGTT, ELSP, CSB; the engine loads the image from the DMA pages.
        let mut c = CmdBuf::new();
        c.store_dword(AddrSpace::Ggtt, WIN + 0x40, 0x1234).lri(&[(0x2_2600, 9)]).srm(
            0x2_2600,
            AddrSpace::Ggtt,
            WIN + 0x44,
        );
        let rep = run(&gpu, Engine::Bcs, &c).unwrap();
        assert_eq!(guest.read_obj::<u32>(GuestAddress(0x40)).unwrap(), 0x1234);
        assert_eq!(guest.read_obj::<u32>(GuestAddress(0x44)).unwrap(), 9);
        assert!(rep.engine_ns > 0, "engine time from the context timestamp");
        assert_eq!(sim.engine_stats(Engine::Bcs).runs, 1);
        // A hang: no completion event, the backend times out and resets the engine via GDRST.
        let mut h = CmdBuf::new();
        h.semaphore_wait(AddrSpace::Ggtt, WIN + 0x80, 1);
        let e = run(&gpu, Engine::Bcs, &h).unwrap_err();
        assert!(matches!(e, HostError::Hang { .. }), "{e}");
        gpu.reset_engine(Engine::Bcs);
        // The same, stopped by an engine reset the guest asked for: the run ends at once.
        let gpu = gpu.with_timeout(Duration::from_secs(60));
        let e = std::thread::scope(|sc| {
            let r = sc.spawn(|| run(&gpu, Engine::Bcs, &h));
            // An abort before the run started is not for it: ask until it ends.
            while !r.is_finished() {
                std::thread::sleep(Duration::from_millis(20));
                gpu.abort(Engine::Bcs);
            }
            r.join().unwrap()
        });
        assert!(matches!(e, Err(HostError::Aborted { engine: Engine::Bcs })), "{e:?}");
        gpu.reset_engine(Engine::Bcs);
        let gpu = gpu.with_timeout(Duration::from_millis(200));
        let mut again = CmdBuf::new();
        again.store_dword(AddrSpace::Ggtt, WIN + 0x48, 7);
        run(&gpu, Engine::Bcs, &again).unwrap();
        assert_eq!(guest.read_obj::<u32>(GuestAddress(0x48)).unwrap(), 7);
        // A batch the ring starts is fetched at dispatch on this backend (no trap sequences yet),
        // after the job is handed over, as it is when the fetch runs.
        let mut start = CmdBuf::new();
        start.bb_start(AddrSpace::Ggtt, WIN + 0x1000, false);
        let mut ctx = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Bcs);
        let mut w = ring_workload(&mut ctx, &gpu.layout(Engine::Bcs), &start);
        w.fetches.push(FetchPoint { buffer: 0, dword: 0, space: AddrSpace::Ggtt, gma: WIN + 0x1000, level: 1 });
        let mut fetch = |p: &FetchPoint| {
            let mut b = CmdBuf::new();
            b.store_dword(AddrSpace::Ggtt, WIN + 0x4c, 0x5e7c).bb_end();
            let mut t = ScannedWorkload::host_ring(Vec::new());
            let kind = BufferKind::Batch { level: p.level, space: p.space, gma: p.gma };
            t.batches.push(ShadowBuffer { kind, dwords: b.dwords });
            Ok(t)
        };
        let mut live = FetchedBatches::default();
        let mut job = HostJob::new(&mut w, None, &mut ctx, false);
        job.fetcher = Some(Fetcher { fetch: &mut fetch, live: &mut live });
        gpu.run(Engine::Bcs, job).unwrap();
        assert_eq!(guest.read_obj::<u32>(GuestAddress(0x4c)).unwrap(), 0x5e7c);
        assert_eq!(live.fetches, 1);
        // A ring that starts a large batch again and again: the fetches stop once what they hold
        // exceeds the batch arena (the second 30 MiB copy), refused, before the rest are copied.
        let mut starts = CmdBuf::new();
        for _ in 0..8 {
            starts.bb_start(AddrSpace::Ggtt, WIN + 0x1000, false);
        }
        let mut ctx = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Bcs);
        let mut w = ring_workload(&mut ctx, &gpu.layout(Engine::Bcs), &starts);
        w.fetches = (0..8)
            .map(|i| FetchPoint { buffer: 0, dword: 3 * i, space: AddrSpace::Ggtt, gma: WIN + 0x1000, level: 1 })
            .collect();
        let mut calls = 0;
        let mut fetch = |p: &FetchPoint| {
            calls += 1;
            let mut t = ScannedWorkload::host_ring(Vec::new());
            let kind = BufferKind::Batch { level: p.level, space: p.space, gma: p.gma };
            t.batches.push(ShadowBuffer { kind, dwords: vec![0; (30 << 20) / 4] });
            Ok(t)
        };
        let mut live = FetchedBatches::default();
        let mut job = HostJob::new(&mut w, None, &mut ctx, false);
        job.fetcher = Some(Fetcher { fetch: &mut fetch, live: &mut live });
        let e = gpu.run(Engine::Bcs, job).unwrap_err();
        assert!(matches!(e, HostError::Refused { .. }), "{e}");
        assert_eq!(calls, 2);
        // Registers go straight to BAR0.
        gpu.write_reg(Engine::Bcs, 0xcc00, 0x33);
        assert_eq!(gpu.read_reg(Engine::Bcs, 0xcc00), 0x33);
        drop(vm);
    }

    /// A BAR0 that plays the CSB events of a scripted engine and records what was submitted.
    #[derive(Default)]
    struct ScriptBar {
        st: Mutex<Script>,
    }

    #[derive(Default)]
    struct Script {
        /// What the engine does: 0 completes at once, 1 runs until preempted, 2 completes just
        /// as the preemption request arrives.
        mode: u8,
        latch: Vec<u32>,
        csb: [u64; 6],
        wp: u8,
        submitted: Vec<(u32, u32)>,
    }

    impl Script {
        fn push(&mut self, status: u32, id: u32) {
            self.wp = if self.wp >= 5 { 0 } else { self.wp + 1 };
            self.csb[usize::from(self.wp)] = u64::from(status) | u64::from(id) << 32;
        }
    }

    impl Bar0 for ScriptBar {
        fn read32(&self, off: u64) -> u32 {
            let st = self.st.lock();
            let base = u64::from(Engine::Bcs.mmio_base());
            match off.wrapping_sub(base) {
                o if o == u64::from(reg::CSB_PTR) => u32::from(st.wp),
                o if (u64::from(reg::CSB)..u64::from(reg::CSB) + 48).contains(&o) => {
                    let e = st.csb[((o - u64::from(reg::CSB)) / 8) as usize];
                    if o % 8 == 0 {
                        e as u32
                    } else {
                        (e >> 32) as u32
                    }
                }
                _ => 0,
            }
        }
        fn write32(&self, off: u64, v: u32) {
            let mut st = self.st.lock();
            if off != u64::from(Engine::Bcs.mmio_base() + reg::ELSP) {
                return;
            }
            st.latch.push(v);
            if st.latch.len() < 4 {
                return;
            }
            let (id, lo) = (st.latch[2], st.latch[3]);
            st.latch.clear();
            st.submitted.push((id, lo));
            match (st.mode, id) {
                (0, _) => {
                    st.push(1, 0);
                    st.push(0x18, id);
                }
                (_, WORK_ID) => st.push(1, 0),
                (1, _) => {
                    st.push(CSB_PREEMPTED | 1, WORK_ID);
                    st.push(0x18, PREEMPT_ID);
                }
                _ => {
                    st.push(0x18, WORK_ID);
                    st.push(1, 0);
                    st.push(0x18, PREEMPT_ID);
                }
            }
        }
    }

    /// DMA memory as pages in a map.
    #[derive(Default)]
    struct MapDma(Mutex<(u64, HashMap<u64, Vec<u8>>)>);
    impl DmaSpace for MapDma {
        fn alloc_page(&self) -> Option<u64> {
            let mut m = self.0.lock();
            m.0 += PAGE_SIZE;
            let at = m.0;
            m.1.insert(at, vec![0; PAGE_SIZE as usize]);
            Some(at)
        }
        fn free_page(&self, iova: u64) {
            self.0.lock().1.remove(&iova);
        }
        fn write(&self, iova: u64, data: &[u8]) -> bool {
            let mut m = self.0.lock();
            let (page, off) = (iova & !(PAGE_SIZE - 1), (iova % PAGE_SIZE) as usize);
            match m.1.get_mut(&page).and_then(|p| p.get_mut(off..off + data.len())) {
                Some(d) => {
                    d.copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
        fn read(&self, iova: u64, buf: &mut [u8]) -> bool {
            let m = self.0.lock();
            let (page, off) = (iova & !(PAGE_SIZE - 1), (iova % PAGE_SIZE) as usize);
            match m.1.get(&page).and_then(|p| p.get(off..off + buf.len())) {
                Some(d) => {
                    buf.copy_from_slice(d);
                    true
                }
                None => false,
            }
        }
        fn attach_guest(&self, _guest: Arc<dyn GuestDma>) -> Option<usize> {
            Some(1)
        }
        fn detach_guest(&self, _slot: usize) {}
    }

    #[test]
    fn preemption_to_idle_through_elsp() {
        for (mode, asks, expect_preempted) in [(0u8, false, false), (1, true, true), (2, true, false)] {
            let bar = Arc::new(ScriptBar::default());
            bar.st.lock().mode = mode;
            let dma = Arc::new(MapDma::default());
            let gpu = VfioGpu::new(bar.clone(), dma.clone(), Gen::Gen9, EngineMask::BCS, 1 << 30);
            let mut ctx = ShadowContext::with_blank_clean(Gen::Gen9, Engine::Bcs);
            let mut ring = CmdBuf::new();
            ring.noop(4);
            let mut w = ring_workload(&mut ctx, &gpu.layout(Engine::Bcs), &ring);
            let stop = |_: u64| true;
            let mut job = HostJob::new(&mut w, None, &mut ctx, false);
            job.preempt = asks.then_some(&stop as &dyn Fn(u64) -> bool);
            let rep = gpu.run(Engine::Bcs, job).unwrap();
            assert_eq!(rep.preempted, expect_preempted, "mode {mode}");
            let submitted: Vec<u32> = bar.st.lock().submitted.iter().map(|s| s.0).collect();
            let expected = if asks { vec![WORK_ID, PREEMPT_ID] } else { vec![WORK_ID] };
            assert_eq!(submitted, expected, "mode {mode}");
            if asks {
                // The preemption context: restore inhibit, an empty ring.
                let lrca = u64::from(bar.st.lock().submitted[1].1 & !0xfff);
                let st = &gpu.state[Engine::Bcs.index()].lock();
                let mut page = [0u32; 1024];
                assert!(gpu.read_back(st, lrca + PAGE_SIZE, page.as_mut_bytes()));
                assert_eq!(page[idx::CONTEXT_CONTROL] & 1, 1);
                assert_eq!(page[idx::RING_HEAD], page[idx::RING_TAIL]);
            }
        }
    }
}
