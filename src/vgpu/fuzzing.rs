//! Entry point shared by the `device` fuzz target and the corpus replay under `cargo test`:
//! arbitrary bytes become a guest's configuration-space, BAR0 (registers, PVINFO, fences, GTT),
//! aperture and I/O accesses and resets on one vGPU, while a second vGPU on the same software
//! GPU sits idle with known memory. Afterwards the victim's guest memory and its host GGTT
//! entries must be untouched. `Ok` says whether every access was accepted.

use std::sync::{Arc, OnceLock};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::host::sim::{SimConfig, SimGpu};
use crate::host::HostGpu;
use crate::hw::reg::{self, ring};
use crate::hw::{Engine, Platform};
use crate::mdev::{GpuInfo, GpuManager, MdevDevice, VgpuType, REGION_BAR0, REGION_BAR2, REGION_BAR4, REGION_CONFIG};
use crate::sched::{SchedConfig, Scheduler};

type Mem = Arc<GuestMemoryMmap<()>>;
const MEM: u64 = 1 << 20;
const PATTERN: u8 = 0xa5;

struct World {
    sim: Arc<SimGpu>,
    gpu: GpuManager,
}

fn world() -> Result<&'static World, String> {
    static W: OnceLock<Result<World, String>> = OnceLock::new();
    W.get_or_init(|| {
        let device = Platform::Skylake.default_device();
        let cfg = SimConfig { engines: device.engines(), ..SimConfig::default() };
        let sim = Arc::new(SimGpu::new(cfg));
        let host: Arc<dyn HostGpu> = sim.clone();
        let sched = Arc::new(Scheduler::new(host, SchedConfig::default()));
        let info = GpuInfo { device, revision: 7, layout: cfg.layout, reserve: cfg.reserve };
        let gpu = GpuManager::new(sched, info).map_err(|e| e.to_string())?;
        gpu.add_type(VgpuType::custom("fuzz", 4 << 20, 4 << 20, 2, 4).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(World { sim, gpu })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Registers worth hitting: everything with behaviour, in BAR0 offsets.
fn hot_registers() -> Vec<u32> {
    let mut v = vec![
        reg::FORCEWAKE_MT,
        reg::FORCEWAKE_RENDER,
        reg::FORCEWAKE_MEDIA,
        reg::FORCEWAKE_ACK_GT,
        reg::GDRST,
        reg::PCODE_MAILBOX,
        reg::PCODE_DATA,
        reg::GUC_STATUS,
        reg::MASTER_IRQ,
        reg::GT_ISR0 + 4,
        reg::GT_ISR0 + 8,
        reg::GT_ISR0 + 0xc,
        reg::SDE_ISR + 8,
        reg::PWR_WELL_CTL1 + 4,
        reg::DBUF_CTL,
        reg::TLB_INVALIDATE_RCS,
        reg::FENCE0,
        reg::FENCE0 + 8 * 3,
        reg::GFX_FLSH_CNTL,
        0x7_8000,
        0x7_8818,
        0x7_8838,
        0x7_883c,
        0x7_8808,
        0x7_8804,
    ];
    for e in [Engine::Rcs, Engine::Bcs, Engine::Vcs, Engine::Vecs] {
        let b = e.mmio_base();
        v.extend([
            b + crate::execlist::reg::ELSP,
            b + crate::execlist::reg::CSB_PTR,
            b + crate::execlist::reg::CSB,
            b + crate::execlist::reg::STATUS_LO,
            b + ring::HWS_PGA,
            b + ring::RING_MODE,
            b + ring::MI_MODE,
            b + ring::RESET_CTL,
            b + ring::TIMESTAMP,
        ]);
    }
    v
}

/// The first `n` (at most 8) bytes of `b`.
fn buf8(b: &mut [u8; 8], n: usize) -> &mut [u8] {
    b.split_at_mut(n.min(8)).0
}

fn take<const N: usize>(d: &mut &[u8]) -> Option<[u8; N]> {
    let (h, t) = d.split_first_chunk::<N>()?;
    *d = t;
    Some(*h)
}

/// Runs one input. Records: `[op, a, b, c, d, v0..v7]` (13 bytes):
/// - op % 8 == 0: config write of `a % 4 + 1` bytes at `b`; 1: config read;
/// - 2/3: BAR0 write/read of `1 << (a % 4)` bytes at a hot register (`b` selects, c's high bit
///   set) or at `(c, d, b)` folded into the register space or the vGPU's GTT;
/// - 4/5: aperture write/read of up to 8 bytes at the vGPU's window + `(c, d)`;
/// - 6: BAR4 access; 7: device reset (a's low bit) or a wait for the engines.
pub fn device_bytes(data: &[u8]) -> Result<bool, String> {
    let w = world()?;
    let mk = || -> Result<(Mem, MdevDevice<Mem>), String> {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).map_err(|e| e.to_string())?,
        );
        let dev = w.gpu.create("fuzz", mem.clone()).map_err(|e| e.to_string())?;
        Ok((mem, dev))
    };
    let (vmem, victim) = mk()?;
    vmem.write_slice(&vec![PATTERN; MEM as usize], GuestAddress(0)).map_err(|e| e.to_string())?;
    let vw = victim.vgpu().params().gm.windows;
    let pte_range = |r: crate::cmd::GmRange| (r.base / 4096)..((r.base + r.size) / 4096);
    let snapshot = || -> Vec<u64> {
        pte_range(vw.aperture).chain(pte_range(vw.hidden)).map(|i| w.sim.memory().read_pte(i)).collect()
    };
    let before = snapshot();
    let (_mem, dev) = mk()?;
    let hot = hot_registers();
    let win = dev.vgpu().params().gm.windows;
    let mut all_ok = true;
    let mut d = data;
    while let Some(rec) = take::<13>(&mut d) {
        let [op, a, b, c, dd, v @ ..] = rec;
        let value = u64::from_le_bytes(v);
        let vb = value.to_le_bytes();
        let r = match op % 8 {
            0 => {
                let n = usize::from(a % 4) + 1;
                dev.write(REGION_CONFIG, u64::from(b), vb.get(..n).unwrap_or(&[])).map(|_| ())
            }
            1 => dev.read(REGION_CONFIG, u64::from(b), &mut [0u8; 4]),
            2 | 3 => {
                let n = 1usize << (a % 4);
                let off = if c & 0x80 != 0 {
                    u64::from(hot.get(usize::from(b) % hot.len().max(1)).copied().unwrap_or(0))
                } else if c & 0x40 != 0 {
                    // A GTT entry in or near the vGPU's aperture window.
                    let page = win.aperture.base / 4096 + u64::from(u16::from_le_bytes([dd, b])) % 2048;
                    crate::hw::bar0::GTT_OFFSET + page * 8
                } else {
                    u64::from(u32::from_le_bytes([b, dd, c & 0x3f, 0])) % u64::from(reg::MMIO_SIZE)
                };
                let off = off & !(n as u64 - 1);
                let value =
                    if c & 0x40 != 0 { (value & 0xfff) | (((value >> 12) % (MEM / 4096 + 2)) << 12) } else { value };
                if op % 8 == 2 {
                    dev.write(REGION_BAR0, off, value.to_le_bytes().get(..n).unwrap_or(&[]))
                } else {
                    dev.read(REGION_BAR0, off, buf8(&mut [0u8; 8], n))
                }
            }
            4 | 5 => {
                let n = usize::from(a % 8) + 1;
                let off = win.aperture.base + u64::from(u16::from_le_bytes([c, dd])) * 64 % win.aperture.size;
                if op % 8 == 4 {
                    dev.write(REGION_BAR2, off, vb.get(..n).unwrap_or(&[]))
                } else {
                    dev.read(REGION_BAR2, off, buf8(&mut [0u8; 8], n))
                }
            }
            6 => {
                let off = u64::from(b % 2) * 4;
                if a & 1 == 0 {
                    dev.write(REGION_BAR4, off, vb.get(..4).unwrap_or(&[]))
                } else {
                    dev.read(REGION_BAR4, off, &mut [0u8; 4])
                }
            }
            _ => {
                if a & 1 != 0 {
                    dev.reset()
                } else {
                    dev.vgpu().engines().wait_idle();
                    Ok(())
                }
            }
        };
        all_ok &= r.is_ok();
    }
    dev.vgpu().engines().wait_idle();
    drop(dev);
    let mut check = vec![0u8; MEM as usize];
    vmem.read_slice(&mut check, GuestAddress(0)).map_err(|e| e.to_string())?;
    if let Some(i) = check.iter().position(|&x| x != PATTERN) {
        return Err(format!("victim guest memory changed at {i:#x}"));
    }
    if snapshot() != before {
        return Err("victim host GGTT entries changed".into());
    }
    Ok(all_ok)
}

/// Seed inputs: an i915-like bring-up, interrupts, GTT and aperture use, resets.
pub fn seeds() -> Vec<Vec<u8>> {
    let rec = |op: u8, a: u8, b: u8, c: u8, d: u8, v: u64| {
        let mut r = vec![op, a, b, c, d];
        r.extend_from_slice(&v.to_le_bytes());
        r
    };
    let hot = hot_registers();
    let h = |off: u32| hot.iter().position(|&x| x == off).unwrap_or(0) as u8;
    let bringup: Vec<u8> = [
        rec(0, 1, 4, 0, 0, 6),
        rec(2, 2, h(reg::FORCEWAKE_RENDER), 0x80, 0, 0x0001_0001),
        rec(3, 2, h(reg::FORCEWAKE_ACK_GT), 0x80, 0, 0),
        rec(3, 3, h(0x7_8000), 0x80, 0, 0),
        rec(2, 2, h(0x2000 + ring::RING_MODE), 0x80, 0, 0x8000_8000),
        rec(2, 2, h(reg::MASTER_IRQ), 0x80, 0, 0x8000_0000),
        rec(2, 2, h(reg::GT_ISR0 + 0xc), 0x80, 0, 0x0101_0101),
        rec(2, 2, h(reg::GT_ISR0 + 4), 0x80, 0, 0),
    ]
    .concat();
    let gtt: Vec<u8> = [rec(2, 3, 0, 0x40, 0, 0x3000 | 1), rec(4, 3, 0, 0, 0, 0x1122), rec(5, 7, 0, 0, 0, 0)].concat();
    let elsp: Vec<u8> = [
        rec(3, 3, h(0x7_8000), 0x80, 0, 0),
        rec(2, 2, h(0x2230), 0x80, 0, 0),
        rec(2, 2, h(0x2230), 0x80, 0, 0x1000_0019),
    ]
    .iter()
    .cycle()
    .take(12)
    .flatten()
    .copied()
    .collect();
    let failsafe: Vec<u8> =
        [rec(2, 2, h(0x2000 + ring::RING_MODE), 0x80, 0, 0x8000_8000), rec(7, 1, 0, 0, 0, 0)].concat();
    let misc: Vec<u8> = [
        rec(2, 2, h(reg::GDRST), 0x80, 0, 1),
        rec(2, 2, h(reg::PCODE_MAILBOX), 0x80, 0, 0x8000_0006),
        rec(6, 0, 0, 0, 0, 0x9120),
        rec(6, 1, 1, 0, 0, 0),
        rec(2, 2, h(0x7_8808), 0x80, 0, 1),
        rec(1, 0, 0x50, 0, 0, 0),
        rec(0, 3, 0x10, 0, 0, 0xffff_ffff),
    ]
    .concat();
    vec![bringup, gtt, elsp, failsafe, misc]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold_the_invariants() {
        for s in seeds() {
            device_bytes(&s).unwrap();
        }
        assert!(device_bytes(&seeds()[1]).unwrap(), "the GTT seed is all valid accesses");
        assert!(!device_bytes(&seeds()[3]).unwrap(), "the failsafe seed breaks the contract");
    }
}
