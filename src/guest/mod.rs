//! A small reference guest driver: it brings a vGPU up and runs work on it only through the
//! device's regions and interrupts, the way a guest i915 does — reads the PCI identity, enables
//! memory decoding and MSI, takes forcewake, reads PVINFO and keeps to its ballooned windows,
//! programs the GGTT, builds a 4-level PPGTT and announces it, enables execlists with a status
//! page per engine, writes contexts and rings, submits through ELSP, and handles interrupts by
//! reading the master and GT IIR registers and the CSB in its status page.
//!
//! Tests, benchmarks and `shadowgpu demo` drive vGPUs with it, in process through an
//! [`MdevDevice`] or over vfio-user through any [`Bus`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use crate::cmd::emit::CmdBuf;
use crate::cmd::{AddrSpace, GmRange};
use crate::context::image::idx;
use crate::execlist::{reg as el, CsbStatus, CSB_ENTRIES, HWSP_CSB_DWORD, HWSP_CSB_WP_DWORD};
use crate::hw::bar0::GTT_OFFSET;
use crate::hw::pvinfo::{off as pv, G2vNotify, VgtCaps, PVINFO_BASE, VGT_MAGIC};
use crate::hw::reg::{self, ring};
use crate::hw::{Device, Engine, EngineMask};
use crate::mdev::{MdevDevice, REGION_BAR0, REGION_CONFIG};
use crate::vgpu::cfg::off as cfg;
use crate::vgpu::irq::{engine_bits, gt, MASTER_IRQ_CONTROL};

const PAGE: u64 = 4096;
/// Bytes of a ring.
const RING_SIZE: u64 = 4 * PAGE;
/// Status-page byte offset of the breadcrumb each submission writes.
const SEQNO_OFFSET: u64 = 0x200;
/// First PPGTT virtual address the driver maps.
pub const PPGTT_VA: u64 = 0x1_0000_0000;
/// Bytes of PPGTT space [`Driver::probe`] maps (one page table).
pub const PPGTT_SIZE: u64 = 2 << 20;
/// PPGTT bytes per engine for batches.
const BATCH_AREA: u64 = 192 << 10;
/// How long [`Driver::submit`] waits for the engine to be done with the batch area it reuses.
const REUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the driver reaches the device: region reads and writes (VFIO region indexes).
pub trait Bus {
    /// Reads `data.len()` bytes of `region` at `offset`.
    fn read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), String>;
    /// Writes `data` to `region` at `offset`.
    fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), String>;
}

impl<A> Bus for MdevDevice<A>
where
    A: vm_memory::GuestAddressSpace + Send + Sync + 'static,
    A::M: Send + Sync,
{
    fn read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), String> {
        MdevDevice::read(self, region, offset, data).map_err(|e| e.to_string())
    }

    fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), String> {
        MdevDevice::write(self, region, offset, data).map_err(|e| e.to_string())
    }
}

/// A reference or a smart pointer to a bus (`&MdevDevice`, `Arc<..>`) is a bus.
impl<P> Bus for P
where
    P: std::ops::Deref,
    P::Target: Bus,
{
    fn read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), String> {
        (**self).read(region, offset, data)
    }

    fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), String> {
        (**self).write(region, offset, data)
    }
}

/// Errors of the reference driver.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A device access failed.
    #[error("device access: {0}")]
    Bus(String),
    /// The device is not a vGPU this driver can use.
    #[error("probe: {0}")]
    Probe(String),
    /// Guest RAM or graphics memory ran out.
    #[error("out of {0}")]
    NoSpace(&'static str),
    /// Guest memory access failed.
    #[error("guest memory at {0:#x}")]
    Memory(u64),
    /// The engine did not complete the submission in time.
    #[error("{engine}: submission {seqno} not complete after {waited:?}")]
    Timeout {
        /// Engine.
        engine: Engine,
        /// Submission number.
        seqno: u32,
        /// Time waited.
        waited: Duration,
    },
}

/// The MSI line as the guest's interrupt handler sees it: the VMM's injection signals it.
#[derive(Clone, Debug, Default)]
pub struct IrqLine(Arc<(Mutex<u64>, Condvar)>);

impl IrqLine {
    /// An interrupt arrived.
    pub fn signal(&self) {
        *self.0 .0.lock() += 1;
        self.0 .1.notify_all();
    }

    /// Interrupts so far.
    pub fn count(&self) -> u64 {
        *self.0 .0.lock()
    }

    /// Waits until more than `seen` interrupts arrived or `timeout` passes.
    fn wait_past(&self, seen: u64, timeout: Duration) {
        let mut n = self.0 .0.lock();
        if *n == seen {
            self.0 .1.wait_for(&mut n, timeout);
        }
    }
}

/// One engine's objects.
#[derive(Clone, Debug)]
struct EngineObjs {
    engine: Engine,
    hws_gma: u64,
    hws_gpa: u64,
    lrca: u64,
    ctx_gpa: u64,
    ring_gma: u64,
    ring_gpa: u64,
    tail: u64,
    /// CSB entries consumed (the read pointer, 0..6; 7 after reset).
    csb_head: u8,
    /// Context-complete events seen.
    completions: u64,
    /// Submission numbers issued on this engine.
    seqno: u32,
    batch_va: u64,
    batch_next: u64,
}

/// Where the driver put one engine's objects (for tests that act as a hostile guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineObjects {
    /// GGTT address of the context image (the descriptor's LRCA).
    pub lrca: u64,
    /// Guest physical address of the context image (page 1 is the register state).
    pub ctx_gpa: u64,
    /// GGTT address of the ring.
    pub ring_gma: u64,
    /// Guest physical address of the ring.
    pub ring_gpa: u64,
    /// GGTT address of the status page.
    pub hws_gma: u64,
    /// Guest physical address of the status page.
    pub hws_gpa: u64,
}

/// What PVINFO told the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvInfo {
    /// vGPU id.
    pub id: u32,
    /// Aperture window.
    pub aperture: GmRange,
    /// Hidden window.
    pub hidden: GmRange,
    /// Fences owned.
    pub fences: u32,
}

/// The driver of one vGPU.
pub struct Driver<B, M> {
    bus: B,
    mem: M,
    irq: IrqLine,
    device: Device,
    pv: PvInfo,
    ram_next: u64,
    ram_end: u64,
    gm_next: u64,
    ppgtt_gpa: u64,
    ppgtt_size: u64,
    pml4: u64,
    engines: Vec<EngineObjs>,
}

impl<B, M> std::fmt::Debug for Driver<B, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("device", &self.device).field("pv", &self.pv).finish()
    }
}

fn bus_err(e: String) -> GuestError {
    GuestError::Bus(e)
}

impl<B: Bus, M: GuestAddressSpace> Driver<B, M> {
    /// Probes and initialises the vGPU on `bus`. The driver allocates its pages from guest RAM
    /// `[ram.0, ram.0 + ram.1)` of the address space `mem`; `irq` is signalled by whoever injects the vGPU's MSI.
    pub fn probe(bus: B, mem: M, ram: (u64, u64), irq: IrqLine) -> Result<Self, GuestError> {
        Self::probe_with(bus, mem, ram, irq, PPGTT_SIZE)
    }

    /// [`Driver::probe`] with `ppgtt_size` bytes (a multiple of 2 MiB, at most 1 GiB) of PPGTT
    /// space mapped from [`PPGTT_VA`].
    pub fn probe_with(bus: B, mem: M, ram: (u64, u64), irq: IrqLine, ppgtt_size: u64) -> Result<Self, GuestError> {
        if ppgtt_size == 0 || ppgtt_size % (2 << 20) != 0 || ppgtt_size > 1 << 30 {
            return Err(GuestError::Probe(format!("PPGTT size {ppgtt_size:#x}: a multiple of 2 MiB up to 1 GiB")));
        }
        let mut id = [0u8; 4];
        bus.read(REGION_CONFIG, 0, &mut id).map_err(bus_err)?;
        let id = u32::from_le_bytes(id);
        if id & 0xffff != 0x8086 {
            return Err(GuestError::Probe(format!("vendor {:#06x} is not Intel", id & 0xffff)));
        }
        let device = *Device::from_id((id >> 16) as u16).map_err(|e| GuestError::Probe(e.to_string()))?;
        let ram_end = ram.0.checked_add(ram.1).ok_or(GuestError::NoSpace("guest RAM"))?;
        let mut d = Driver {
            bus,
            mem,
            irq,
            device,
            pv: PvInfo { id: 0, aperture: GmRange::default(), hidden: GmRange::default(), fences: 0 },
            ram_next: ram.0,
            ram_end,
            gm_next: 0,
            ppgtt_gpa: 0,
            ppgtt_size,
            pml4: 0,
            engines: Vec::new(),
        };
        // Memory decoding, bus mastering, MSI.
        d.bus.write(REGION_CONFIG, cfg::COMMAND as u64, &0x0006u16.to_le_bytes()).map_err(bus_err)?;
        d.bus.write(REGION_CONFIG, cfg::MSI_CAP as u64 + 2, &1u16.to_le_bytes()).map_err(bus_err)?;
        d.forcewake()?;
        d.read_pvinfo()?;
        d.gm_next = d.pv.aperture.base;
        d.setup_interrupts()?;
        d.setup_ppgtt()?;
        for e in Engine::ALL.into_iter().filter(|&e| device.has_engine(e)) {
            d.setup_engine(e)?;
        }
        Ok(d)
    }

    fn r32(&self, off: u32) -> Result<u32, GuestError> {
        let mut b = [0u8; 4];
        self.bus.read(REGION_BAR0, u64::from(off), &mut b).map_err(bus_err)?;
        Ok(u32::from_le_bytes(b))
    }

    fn w32(&self, off: u32, v: u32) -> Result<(), GuestError> {
        self.bus.write(REGION_BAR0, u64::from(off), &v.to_le_bytes()).map_err(bus_err)
    }

    fn forcewake(&self) -> Result<(), GuestError> {
        let domains: &[(u32, u32)] = match self.device.platform.gen() {
            crate::hw::Gen::Gen8 => &[(reg::FORCEWAKE_MT, reg::FORCEWAKE_ACK_GT)],
            crate::hw::Gen::Gen9 => &[
                (reg::FORCEWAKE_RENDER, reg::FORCEWAKE_ACK_RENDER),
                (reg::FORCEWAKE_MT, reg::FORCEWAKE_ACK_GT),
                (reg::FORCEWAKE_MEDIA, reg::FORCEWAKE_ACK_MEDIA),
            ],
        };
        for &(req, ack) in domains {
            self.w32(req, 1 << 16 | 1)?;
            let t = Instant::now();
            while self.r32(ack)? & 1 == 0 {
                if t.elapsed() > Duration::from_millis(50) {
                    return Err(GuestError::Probe(format!("forcewake ack {ack:#x} timed out")));
                }
            }
        }
        Ok(())
    }

    fn read_pvinfo(&mut self) -> Result<(), GuestError> {
        let magic = u64::from(self.r32(PVINFO_BASE + pv::MAGIC)?) | u64::from(self.r32(PVINFO_BASE + 4)?) << 32;
        if magic != VGT_MAGIC {
            return Err(GuestError::Probe("no PVINFO: not a vGPU".into()));
        }
        if self.r32(PVINFO_BASE + pv::VERSION)? & 0xffff < 1 {
            return Err(GuestError::Probe("PVINFO version below 1".into()));
        }
        let caps = VgtCaps::from_bits_truncate(self.r32(PVINFO_BASE + pv::CAPS)?);
        if !caps.contains(VgtCaps::FULL_PPGTT | VgtCaps::HWSP_EMULATION) {
            return Err(GuestError::Probe("vGPU lacks full PPGTT or HWSP emulation".into()));
        }
        let rs = |i: u32| self.r32(PVINFO_BASE + pv::AVAIL_RS + 4 * i).map(u64::from);
        self.pv = PvInfo {
            id: self.r32(PVINFO_BASE + pv::VGT_ID)?,
            aperture: GmRange::new(rs(0)?, rs(1)?),
            hidden: GmRange::new(rs(2)?, rs(3)?),
            fences: self.r32(PVINFO_BASE + pv::FENCE_NUM)?,
        };
        Ok(())
    }

    fn setup_interrupts(&self) -> Result<(), GuestError> {
        let mut enable = [0u32; 4];
        for e in Engine::ALL.into_iter().filter(|&e| self.device.has_engine(e)) {
            let (group, shift) = engine_bits(e);
            let bank = ((group.isr() - reg::GT_ISR0) / 0x10) as usize;
            if let Some(b) = enable.get_mut(bank) {
                *b |= (gt::USER | gt::CONTEXT_SWITCH) << shift;
            }
        }
        for (bank, bits) in enable.iter().enumerate() {
            let isr = reg::GT_ISR0 + 0x10 * bank as u32;
            self.w32(isr + 4, !bits)?;
            self.w32(isr + 0xc, *bits)?;
        }
        self.w32(reg::MASTER_IRQ, MASTER_IRQ_CONTROL)
    }

    /// Allocates `len` bytes (page multiple) of guest RAM.
    fn ram(&mut self, len: u64) -> Result<u64, GuestError> {
        let at = self.ram_next;
        let end = at.checked_add(len).filter(|&e| e <= self.ram_end).ok_or(GuestError::NoSpace("guest RAM"))?;
        self.ram_next = end;
        let zero = vec![0u8; len as usize];
        self.mem.memory().write_slice(&zero, GuestAddress(at)).map_err(|_| GuestError::Memory(at))?;
        Ok(at)
    }

    /// Allocates `len` bytes of aperture graphics memory backed by new guest pages, programming
    /// the GGTT through BAR0. Returns (graphics address, guest physical address).
    pub fn gm_alloc(&mut self, len: u64) -> Result<(u64, u64), GuestError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let gma = self.gm_next;
        if !self.pv.aperture.contains(gma, len) {
            return Err(GuestError::NoSpace("graphics memory"));
        }
        let gpa = self.ram(len)?;
        for p in 0..len / PAGE {
            let pte = (gpa + p * PAGE) | 1;
            let at = GTT_OFFSET + (gma / PAGE + p) * 8;
            self.bus.write(REGION_BAR0, at, &pte.to_le_bytes()).map_err(bus_err)?;
        }
        self.gm_next = gma + len;
        Ok((gma, gpa))
    }

    fn setup_ppgtt(&mut self) -> Result<(), GuestError> {
        // PML4 -> PDP -> PD -> page tables mapping PPGTT_VA.. to contiguous guest pages.
        let pts = self.ppgtt_size >> 21;
        let tables = self.ram((3 + pts) * PAGE)?;
        let backing = self.ram(self.ppgtt_size)?;
        let q = |m: &M, a: u64, v: u64| m.memory().write_obj(v, GuestAddress(a)).map_err(|_| GuestError::Memory(a));
        let l4 = (PPGTT_VA >> 39) & 0x1ff;
        let l3 = (PPGTT_VA >> 30) & 0x1ff;
        let l2 = (PPGTT_VA >> 21) & 0x1ff;
        q(&self.mem, tables + 8 * l4, (tables + PAGE) | 3)?;
        q(&self.mem, tables + PAGE + 8 * l3, (tables + 2 * PAGE) | 3)?;
        for t in 0..pts {
            q(&self.mem, tables + 2 * PAGE + 8 * (l2 + t), (tables + (3 + t) * PAGE) | 3)?;
        }
        for i in 0..self.ppgtt_size / PAGE {
            q(&self.mem, tables + 3 * PAGE + 8 * i, (backing + i * PAGE) | 3)?;
        }
        self.ppgtt_gpa = backing;
        // Announce it (g2v): PDP0 holds the PML4.
        self.w32(PVINFO_BASE + pv::PDP, tables as u32)?;
        self.w32(PVINFO_BASE + pv::PDP + 4, (tables >> 32) as u32)?;
        self.w32(PVINFO_BASE + pv::G2V_NOTIFY, G2vNotify::Ppgtt4Create as u32)?;
        self.pml4 = tables;
        Ok(())
    }

    fn setup_engine(&mut self, engine: Engine) -> Result<(), GuestError> {
        let base = engine.mmio_base();
        let (hws_gma, hws_gpa) = self.gm_alloc(PAGE)?;
        let size = crate::context::image::context_size(self.device.platform.gen(), engine);
        let (lrca, ctx_gpa) = self.gm_alloc(size)?;
        let (ring_gma, ring_gpa) = self.gm_alloc(RING_SIZE)?;
        self.w32(base + ring::HWS_PGA, hws_gma as u32)?;
        self.w32(base + ring::RING_MODE, ring::GFX_RUN_LIST_ENABLE << 16 | ring::GFX_RUN_LIST_ENABLE)?;
        // Reset the CSB pointers as i915 does: read pointer and write pointer to 7.
        self.w32(base + el::CSB_PTR, 0x0707 << 16 | 0x0707)?;
        let state = ctx_gpa + PAGE;
        let put = |m: &M, i: usize, v: u32| {
            let a = state + 4 * i as u64;
            m.memory().write_obj(v, GuestAddress(a)).map_err(|_| GuestError::Memory(a))
        };
        put(&self.mem, idx::RING_START, ring_gma as u32)?;
        put(&self.mem, idx::RING_CTL, ((RING_SIZE / PAGE - 1) as u32) << 12 | 1)?;
        put(&self.mem, idx::PDP3_UDW + 12, (self.pml4 >> 32) as u32)?;
        put(&self.mem, idx::PDP3_UDW + 14, self.pml4 as u32)?;
        let slot = self.engines.len() as u64;
        let batch_va = PPGTT_VA + slot * BATCH_AREA;
        if batch_va + BATCH_AREA > PPGTT_VA + self.ppgtt_size / 2 {
            return Err(GuestError::NoSpace("PPGTT batch space"));
        }
        self.engines.push(EngineObjs {
            engine,
            hws_gma,
            hws_gpa,
            lrca,
            ctx_gpa,
            ring_gma,
            ring_gpa,
            tail: 0,
            csb_head: (CSB_ENTRIES - 1) as u8,
            completions: 0,
            seqno: 0,
            batch_va,
            batch_next: 0,
        });
        Ok(())
    }

    fn objs(&self, engine: Engine) -> Result<usize, GuestError> {
        self.engines
            .iter()
            .position(|o| o.engine == engine)
            .ok_or_else(|| GuestError::Probe(format!("the vGPU has no {engine} engine")))
    }

    /// What PVINFO said.
    pub fn pvinfo(&self) -> PvInfo {
        self.pv
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The engines the driver initialised.
    pub fn engines(&self) -> EngineMask {
        self.engines.iter().fold(EngineMask::empty(), |m, o| m | o.engine.mask())
    }

    /// The guest physical address behind PPGTT address `va` (in the mapped range).
    pub fn ppgtt_gpa(&self, va: u64) -> Option<u64> {
        let off = va.checked_sub(PPGTT_VA).filter(|&o| o < self.ppgtt_size)?;
        Some(self.ppgtt_gpa + off)
    }

    /// A PPGTT buffer area free for the caller's data: the upper half of the mapped range.
    pub fn data_va(&self) -> u64 {
        PPGTT_VA + self.ppgtt_size / 2
    }

    /// Bytes of PPGTT space mapped.
    pub fn ppgtt_size(&self) -> u64 {
        self.ppgtt_size
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Where `engine`'s context, ring and status page are.
    pub fn engine_objects(&self, engine: Engine) -> Result<EngineObjects, GuestError> {
        let o = self.engines.get(self.objs(engine)?).ok_or(GuestError::NoSpace("engine"))?;
        Ok(EngineObjects {
            lrca: o.lrca,
            ctx_gpa: o.ctx_gpa,
            ring_gma: o.ring_gma,
            ring_gpa: o.ring_gpa,
            hws_gma: o.hws_gma,
            hws_gpa: o.hws_gpa,
        })
    }

    /// The guest physical address of the driver's PML4 (its contexts' page-table root).
    pub fn pml4(&self) -> u64 {
        self.pml4
    }

    /// Submits `batch` (ending in MI_BATCH_BUFFER_END) on `engine`: it is copied to the engine's
    /// PPGTT batch area, and the ring gets a start of it, a breadcrumb store to the status page
    /// and a user interrupt. Returns the submission number to [`Driver::wait`] for.
    pub fn submit(&mut self, engine: Engine, batch: &CmdBuf) -> Result<u32, GuestError> {
        let i = self.objs(engine)?;
        let bytes = batch.to_bytes();
        let len = (bytes.len() as u64).div_ceil(64) * 64;
        let o = self.engines.get_mut(i).ok_or(GuestError::NoSpace("engine"))?;
        if len > BATCH_AREA {
            return Err(GuestError::NoSpace("batch area"));
        }
        if o.batch_next + len > BATCH_AREA {
            // The engine reads a batch when it gets to it, so the area is reused only once every
            // batch in it has run, as a real driver waits for a buffer to be idle.
            o.batch_next = 0;
            let last = o.seqno;
            self.wait(engine, last, REUSE_TIMEOUT)?;
        }
        let o = self.engines.get_mut(i).ok_or(GuestError::NoSpace("engine"))?;
        let va = o.batch_va + o.batch_next;
        o.batch_next += len;
        let gpa = self.ppgtt_gpa(va).ok_or(GuestError::NoSpace("PPGTT"))?;
        self.mem.memory().write_slice(&bytes, GuestAddress(gpa)).map_err(|_| GuestError::Memory(gpa))?;
        let mut start = CmdBuf::new();
        start.bb_start(AddrSpace::Ppgtt, va, false);
        self.submit_ring(engine, &start)
    }

    /// Writes `ring` (commands for the ring itself) into `engine`'s ring followed by a breadcrumb
    /// store and a user interrupt, and submits the context. Returns the submission number.
    pub fn submit_ring(&mut self, engine: Engine, ring: &CmdBuf) -> Result<u32, GuestError> {
        let i = self.objs(engine)?;
        let o = self.engines.get_mut(i).ok_or(GuestError::NoSpace("engine"))?;
        o.seqno = o.seqno.wrapping_add(1);
        let (seqno, hws_gma, ring_gma, ring_gpa, mut tail, lrca, ctx_gpa) =
            (o.seqno, o.hws_gma, o.ring_gma, o.ring_gpa, o.tail, o.lrca, o.ctx_gpa);
        let mut cmds = ring.clone();
        cmds.store_dword(AddrSpace::Ggtt, hws_gma + SEQNO_OFFSET, seqno).user_interrupt();
        cmds.align_qword();
        let c = cmds.to_bytes();
        if tail + c.len() as u64 > RING_SIZE {
            // Pad to the end with MI_NOOPs and wrap.
            let pad = vec![0u8; (RING_SIZE - tail) as usize];
            self.mem
                .memory()
                .write_slice(&pad, GuestAddress(ring_gpa + tail))
                .map_err(|_| GuestError::Memory(ring_gpa))?;
            tail = 0;
        }
        self.mem.memory().write_slice(&c, GuestAddress(ring_gpa + tail)).map_err(|_| GuestError::Memory(ring_gpa))?;
        tail = (tail + c.len() as u64) % RING_SIZE;
        let tail_at = ctx_gpa + PAGE + 4 * idx::RING_TAIL as u64;
        self.mem.memory().write_obj(tail as u32, GuestAddress(tail_at)).map_err(|_| GuestError::Memory(tail_at))?;
        if let Some(o) = self.engines.get_mut(i) {
            o.tail = tail;
        }
        let _ = ring_gma;
        let desc = lrca | 3 << 3 | 1 << 8 | 1;
        let base = engine.mmio_base() + el::ELSP;
        for v in [0, 0, engine.index() as u32 + 1, desc as u32] {
            self.w32(base, v)?;
        }
        Ok(seqno)
    }

    /// The last breadcrumb `engine` wrote.
    pub fn breadcrumb(&self, engine: Engine) -> Result<u32, GuestError> {
        let o = self.engines.get(self.objs(engine)?).ok_or(GuestError::NoSpace("engine"))?;
        let at = o.hws_gpa + SEQNO_OFFSET;
        self.mem.memory().read_obj(GuestAddress(at)).map_err(|_| GuestError::Memory(at))
    }

    /// Context-complete events seen on `engine`.
    pub fn completions(&self, engine: Engine) -> u64 {
        self.objs(engine).ok().and_then(|i| self.engines.get(i)).map_or(0, |o| o.completions)
    }

    /// Waits until submission `seqno` on `engine` has written its breadcrumb, handling
    /// interrupts meanwhile.
    pub fn wait(&mut self, engine: Engine, seqno: u32, timeout: Duration) -> Result<(), GuestError> {
        let t = Instant::now();
        loop {
            let seen = self.irq.count();
            self.handle_interrupt()?;
            if self.breadcrumb(engine)?.wrapping_sub(seqno) as i32 >= 0 {
                return Ok(());
            }
            let waited = t.elapsed();
            if waited > timeout {
                return Err(GuestError::Timeout { engine, seqno, waited });
            }
            self.irq.wait_past(seen, Duration::from_millis(5));
        }
    }

    /// The interrupt handler: master off, each pending GT bank's IIR read and cleared, the CSB
    /// of each engine that switched contexts consumed from its status page, master on.
    pub fn handle_interrupt(&mut self) -> Result<(), GuestError> {
        self.w32(reg::MASTER_IRQ, 0)?;
        let master = self.r32(reg::MASTER_IRQ)?;
        let mut iir = [0u32; 4];
        for (bank, bits) in [(0usize, 0b11u32), (1, 0b1100), (3, 1 << 6)] {
            if master & bits != 0 {
                let at = reg::GT_ISR0 + 0x10 * bank as u32 + 8;
                let v = self.r32(at)?;
                self.w32(at, v)?;
                if let Some(x) = iir.get_mut(bank) {
                    *x = v;
                }
            }
        }
        for i in 0..self.engines.len() {
            let Some(engine) = self.engines.get(i).map(|o| o.engine) else { continue };
            let (group, shift) = engine_bits(engine);
            let bank = ((group.isr() - reg::GT_ISR0) / 0x10) as usize;
            if iir.get(bank).is_some_and(|v| v & (gt::CONTEXT_SWITCH << shift) != 0) {
                self.process_csb(i)?;
            }
        }
        self.w32(reg::MASTER_IRQ, MASTER_IRQ_CONTROL)
    }

    fn process_csb(&mut self, i: usize) -> Result<(), GuestError> {
        let Some(o) = self.engines.get(i) else { return Ok(()) };
        let (hws, mut head, engine) = (o.hws_gpa, o.csb_head, o.engine);
        let wp_at = hws + 4 * HWSP_CSB_WP_DWORD;
        let wp: u32 = self.mem.memory().read_obj(GuestAddress(wp_at)).map_err(|_| GuestError::Memory(wp_at))?;
        let wp = (wp & 7) as u8;
        if usize::from(wp) >= CSB_ENTRIES {
            return Ok(());
        }
        let mut completions = 0;
        while head != wp {
            head = ((usize::from(head) + 1) % CSB_ENTRIES) as u8;
            let at = hws + 4 * (HWSP_CSB_DWORD + 2 * u64::from(head));
            let status: u32 = self.mem.memory().read_obj(GuestAddress(at)).map_err(|_| GuestError::Memory(at))?;
            if CsbStatus::from_bits_truncate(status).contains(CsbStatus::CONTEXT_COMPLETE) {
                completions += 1;
            }
        }
        if let Some(o) = self.engines.get_mut(i) {
            o.csb_head = head;
            o.completions += completions;
        }
        self.w32(engine.mmio_base() + el::CSB_PTR, 0x0700 << 16 | u32::from(head) << 8)
    }

    /// Resets `engine` through GDRST (as i915 after a hang) and starts its ring and CSB afresh.
    pub fn reset_engine(&mut self, engine: Engine) -> Result<(), GuestError> {
        let i = self.objs(engine)?;
        let base = engine.mmio_base();
        self.w32(base + ring::RESET_CTL, ring::REQUEST_RESET << 16 | ring::REQUEST_RESET)?;
        if self.r32(base + ring::RESET_CTL)? & ring::READY_TO_RESET == 0 {
            return Err(GuestError::Probe(format!("{engine} not ready for reset")));
        }
        self.w32(reg::GDRST, engine.gdrst_bit())?;
        let t = Instant::now();
        while self.r32(reg::GDRST)? & engine.gdrst_bit() != 0 {
            if t.elapsed() > Duration::from_millis(50) {
                return Err(GuestError::Probe(format!("{engine} reset did not complete")));
            }
        }
        self.w32(base + ring::RESET_CTL, ring::REQUEST_RESET << 16)?;
        self.w32(base + el::CSB_PTR, 0x0707 << 16 | 0x0707)?;
        let Some(o) = self.engines.get_mut(i) else { return Ok(()) };
        o.csb_head = (CSB_ENTRIES - 1) as u8;
        // The context restarts at the ring's current tail: head = tail, nothing pending.
        let state = o.ctx_gpa + PAGE;
        let tail = o.tail as u32;
        for (ix, v) in [(idx::RING_HEAD, tail), (idx::RING_TAIL, tail)] {
            let a = state + 4 * ix as u64;
            self.mem.memory().write_obj(v, GuestAddress(a)).map_err(|_| GuestError::Memory(a))?;
        }
        Ok(())
    }
}
