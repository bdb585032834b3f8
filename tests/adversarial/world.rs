//! The world every attack runs in: one software GPU, an attacker vGPU created first and a victim
//! vGPU beside it, each driven by the reference guest driver, and the victim's canaries.
//!
//! After an attack, [`World::assert_unharmed`] checks what isolation promises: the victim's
//! canary pages (in its RAM, in its aperture window and in its hidden window) hold what they
//! held, every host GGTT entry outside the attacker's windows is as it was, no command stream
//! wrote a register outside its engine (GPU reset, GTT, display, power), and the victim still
//! runs work on every engine.

use std::sync::Arc;
use std::time::Duration;

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::{AddrSpace, GmRange};
use shadowgpu::guest::{Driver, EngineObjects, IrqLine};
use shadowgpu::host::sim::{CostModel, SimConfig, SimGpu};
use shadowgpu::host::HostGpu;
use shadowgpu::hw::{Engine, Platform};
use shadowgpu::mdev::{GpuInfo, GpuManager, IrqTrigger, MdevDevice, IRQ_MSI, REGION_BAR0};
use shadowgpu::sched::{SchedConfig, Scheduler, VgpuStats};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub type Mem = Arc<GuestMemoryMmap<()>>;
pub type Dev = Arc<MdevDevice<Mem>>;
pub const RAM: u64 = 64 << 20;
pub const T: Duration = Duration::from_secs(20);
pub const PAGE: u64 = 4096;
/// What the victim's canary pages hold.
pub const CANARY: u8 = 0x5a;
/// Where the victim's RAM canary is (a page the guest driver never allocates).
pub const RAM_CANARY: u64 = RAM - 16 * PAGE;
/// Where the victim's hidden-window canary's page is in its RAM.
pub const HIDDEN_CANARY_GPA: u64 = RAM - 8 * PAGE;

pub struct Vm {
    pub dev: Dev,
    pub mem: Mem,
    pub g: Driver<Dev, Mem>,
}

impl Vm {
    fn new(gpu: &GpuManager) -> Vm {
        let mem: Mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
        let dev = Arc::new(gpu.create("GVTg_V5_8", mem.clone()).unwrap());
        let line = IrqLine::default();
        let l = line.clone();
        dev.set_irq(IRQ_MSI, Some(IrqTrigger::Callback(Arc::new(move || l.signal())))).unwrap();
        let g = Driver::probe(dev.clone(), mem.clone(), (1 << 20, RAM / 2), line).unwrap();
        Vm { dev, mem, g }
    }

    pub fn windows(&self) -> (GmRange, GmRange) {
        let p = self.g.pvinfo();
        (p.aperture, p.hidden)
    }

    pub fn objs(&self, e: Engine) -> EngineObjects {
        self.g.engine_objects(e).unwrap()
    }

    pub fn stats(&self) -> VgpuStats {
        self.dev.vgpu().engines().stats().unwrap()
    }

    /// Workloads of this vGPU that did not run to completion: refused at submission or failed.
    pub fn stopped(&self) -> u64 {
        let s = self.stats();
        s.failed + s.rejections.values().sum::<u64>()
    }

    pub fn wait_idle(&self) {
        self.dev.vgpu().engines().wait_idle();
    }

    pub fn w32(&self, gpa: u64, v: u32) {
        self.mem.write_obj(v, GuestAddress(gpa)).unwrap();
    }

    pub fn r32(&self, gpa: u64) -> u32 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    /// Writes value dword `i` of the register-state page of `e`'s context.
    pub fn ctx_state(&self, e: Engine, i: usize, v: u32) {
        self.w32(self.objs(e).ctx_gpa + PAGE + 4 * i as u64, v);
    }

    /// Writes `c` at guest physical `gpa`.
    pub fn put(&self, gpa: u64, c: &CmdBuf) {
        self.mem.write_slice(&c.to_bytes(), GuestAddress(gpa)).unwrap();
    }

    /// Programs GGTT entry for graphics address `gma` (raw PTE value).
    pub fn gtt(&self, gma: u64, pte: u64) {
        let at = shadowgpu::hw::bar0::GTT_OFFSET + gma / PAGE * 8;
        self.dev.write(REGION_BAR0, at, &pte.to_le_bytes()).unwrap();
    }

    /// Runs `batch` on `e` and waits for it: the vGPU works.
    pub fn works(&mut self, e: Engine, value: u32) {
        let va = self.g.data_va() + 0x100 * e.index() as u64;
        let mut b = CmdBuf::new();
        b.store_dword(AddrSpace::Ppgtt, va, value).bb_end();
        let s = self.g.submit(e, &b).unwrap();
        self.g.wait(e, s, T).unwrap_or_else(|err| panic!("{e}: {err}"));
        let got = self.r32(self.g.ppgtt_gpa(va).unwrap());
        assert_eq!(got, value, "{e}");
    }
}

pub struct World {
    pub sim: Arc<SimGpu>,
    _gpu: GpuManager,
    pub attacker: Vm,
    pub victim: Vm,
    /// Victim aperture and hidden canaries: (graphics address, guest physical address).
    pub victim_gtt_canary: (u64, u64),
    pub victim_hidden_canary: (u64, u64),
    ggtt: Vec<u64>,
}

impl World {
    pub fn new() -> World {
        Self::with_cost(CostModel { hang_timeout_ns: 2_000_000_000, ..CostModel::default() })
    }

    pub fn with_cost(cost: CostModel) -> World {
        let platform = Platform::Skylake;
        let device = platform.default_device();
        let cfg = SimConfig { gen: platform.gen(), engines: device.engines(), cost, ..SimConfig::default() };
        let sim = Arc::new(SimGpu::new(cfg));
        let host: Arc<dyn HostGpu> = sim.clone();
        let sched = Arc::new(Scheduler::new(host, SchedConfig::default()));
        let info = GpuInfo { device, revision: 7, layout: cfg.layout, reserve: cfg.reserve };
        let gpu = GpuManager::new(sched, info).unwrap();
        let attacker = Vm::new(&gpu);
        let mut victim = Vm::new(&gpu);
        let page = vec![CANARY; PAGE as usize];
        victim.mem.write_slice(&page, GuestAddress(RAM_CANARY)).unwrap();
        let gtt = victim.g.gm_alloc(PAGE).unwrap();
        victim.mem.write_slice(&page, GuestAddress(gtt.1)).unwrap();
        let hidden_gma = victim.windows().1.base;
        victim.gtt(hidden_gma, HIDDEN_CANARY_GPA | 1);
        victim.mem.write_slice(&page, GuestAddress(HIDDEN_CANARY_GPA)).unwrap();
        let entries = sim.memory().ggtt_entries();
        let ggtt = (0..entries).map(|i| sim.memory().read_pte(i)).collect();
        World {
            sim,
            _gpu: gpu,
            attacker,
            victim,
            victim_gtt_canary: gtt,
            victim_hidden_canary: (hidden_gma, HIDDEN_CANARY_GPA),
            ggtt,
        }
    }

    /// The host address (as the GPU reaches it) of the victim's guest physical `gpa`: the
    /// attacker cannot see it, but an attack may guess it, as one could guess IOVAs.
    pub fn victim_host_addr(&self, gpa: u64) -> u64 {
        self.sim.memory().guest_host_addr(2, gpa, PAGE).unwrap()
    }

    /// The host address of the attacker's own guest physical `gpa`.
    pub fn attacker_host_addr(&self, gpa: u64) -> u64 {
        self.sim.memory().guest_host_addr(1, gpa, PAGE).unwrap()
    }

    /// Checks isolation held; then the victim still works on every engine.
    pub fn assert_unharmed(&mut self) {
        self.attacker.wait_idle();
        for (what, gpa) in [
            ("RAM canary", RAM_CANARY),
            ("aperture canary", self.victim_gtt_canary.1),
            ("hidden canary", self.victim_hidden_canary.1),
        ] {
            let mut b = vec![0u8; PAGE as usize];
            self.victim.mem.read_slice(&mut b, GuestAddress(gpa)).unwrap();
            let bad = b.iter().position(|&x| x != CANARY);
            assert_eq!(bad, None, "the victim's {what} page was written");
        }
        let (ap, hid) = self.attacker.windows();
        for (i, &pte) in self.ggtt.iter().enumerate() {
            let gma = i as u64 * PAGE;
            if ap.contains(gma, 1) || hid.contains(gma, 1) {
                continue;
            }
            let now = self.sim.memory().read_pte(i as u64);
            // The host's shadow areas fill in as the engines run; nothing else may move.
            let shadow = self.sim.shadow_range();
            if pte == 0 && shadow.aperture.contains(gma, 1) {
                continue;
            }
            assert_eq!(now, pte, "host GGTT entry {i} (graphics address {gma:#x}) changed");
        }
        let writes = self.sim.stream_register_writes();
        assert!(writes.is_empty(), "command streams wrote GPU-wide registers: {writes:?}");
        for e in [Engine::Rcs, Engine::Bcs, Engine::Vcs, Engine::Vecs] {
            self.victim.works(e, 0x600d_0000 | e.index() as u32);
        }
        assert_eq!(self.victim.stopped(), 0, "the victim lost work: {:?}", self.victim.stats());
    }

    /// Holds `engine` busy with a victim workload that waits until [`Gate::open`]: the engine
    /// runs it (it has stored its marker) when this returns.
    pub fn gate(&mut self, engine: Engine) -> Gate {
        let va = self.victim.g.data_va() + 0x8000;
        let gpa = self.victim.g.ppgtt_gpa(va).unwrap();
        self.victim.w32(gpa, 0);
        self.victim.w32(gpa + 4, 0);
        let mut b = CmdBuf::new();
        b.store_dword(AddrSpace::Ppgtt, va + 4, 1).semaphore_wait(AddrSpace::Ppgtt, va, 1).bb_end();
        let seqno = self.victim.g.submit(engine, &b).unwrap();
        let t = std::time::Instant::now();
        while self.victim.r32(gpa + 4) != 1 {
            assert!(t.elapsed() < T, "the gate workload never ran");
            std::thread::yield_now();
        }
        Gate { gpa, engine, seqno }
    }
}

/// A victim workload holding an engine until opened.
pub struct Gate {
    gpa: u64,
    engine: Engine,
    seqno: u32,
}

impl Gate {
    pub fn open(self, w: &mut World) {
        w.victim.w32(self.gpa, 1);
        w.victim.g.wait(self.engine, self.seqno, T).unwrap();
    }
}
