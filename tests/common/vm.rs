//! Shared by the in-process tests that drive vGPUs with the reference guest driver: a VM (guest
//! RAM, a vGPU of a `GpuManager`, MSI into the driver's interrupt line) and a way to hold an
//! engine busy with another vGPU's work.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::AddrSpace::Ppgtt;
use shadowgpu::guest::{Driver, IrqLine};
use shadowgpu::hw::Engine;
use shadowgpu::mdev::{GpuManager, IrqTrigger, MdevDevice, IRQ_MSI};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub type Mem = Arc<GuestMemoryMmap<()>>;
pub type Dev = Arc<MdevDevice<Mem>>;
pub const RAM: u64 = 32 << 20;
pub const T: Duration = Duration::from_secs(60);

/// A VM with a `GVTg_V5_8` vGPU of `gpu`, probed by the reference driver.
pub fn vm(gpu: &GpuManager) -> (Dev, Mem, Driver<Dev, Mem>) {
    let mem: Mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    let dev = Arc::new(gpu.create("GVTg_V5_8", mem.clone()).unwrap());
    let line = IrqLine::default();
    let l = line.clone();
    dev.set_irq(IRQ_MSI, Some(IrqTrigger::Callback(Arc::new(move || l.signal())))).unwrap();
    let g = Driver::probe(dev.clone(), mem.clone(), (1 << 20, RAM - (1 << 20)), line).unwrap();
    (dev, mem, g)
}

/// Holds `engine` with a workload of `g`'s that turns arbitration off (so nothing preempts it)
/// and waits for a semaphore until the returned closure releases it.
pub fn hold(g: &mut Driver<Dev, Mem>, mem: &Mem, engine: Engine) -> impl FnOnce() {
    let sem = g.data_va() + 0x8000;
    let sem_gpa = g.ppgtt_gpa(sem).unwrap();
    mem.write_obj(0u32, GuestAddress(sem_gpa)).unwrap();
    let mut b = CmdBuf::new();
    b.raw(&[0x0400_0000]).semaphore_wait(Ppgtt, sem, 1).raw(&[0x0400_0001]).bb_end();
    g.submit(engine, &b).unwrap();
    let mem = mem.clone();
    move || mem.write_obj(1u32, GuestAddress(sem_gpa)).unwrap()
}
