//! Shared by the vfio-user tests: a well-formed client (`vfio_user::Client`, the client
//! cloud-hypervisor uses) driving a served vGPU with the reference guest driver.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shadowgpu::guest::{Bus, IrqLine};
use shadowgpu::mdev::IRQ_MSI;
use vfio_user::Client;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

pub const RAM: u64 = 32 << 20;
pub const T: Duration = Duration::from_secs(10);

pub struct VuBus(pub Mutex<Client>);

impl Bus for VuBus {
    fn read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), String> {
        self.0.lock().region_read(region, offset, data).map_err(|e| e.to_string())
    }

    fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), String> {
        self.0.lock().region_write(region, offset, data).map_err(|e| e.to_string())
    }
}

pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shadowgpu-vu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A VM's RAM: a file both sides map (as QEMU's memfd backend with share=on).
pub fn ram(dir: &std::path::Path, name: &str) -> (File, Arc<GuestMemoryMmap<()>>) {
    let f = File::options().read(true).write(true).create(true).truncate(true).open(dir.join(name)).unwrap();
    f.set_len(RAM).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        RAM as usize,
        Some(FileOffset::new(f.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    (f, Arc::new(mem))
}

pub fn eventfd() -> File {
    // SAFETY: eventfd has no memory-safety preconditions; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor this function owns.
    unsafe { File::from_raw_fd(fd) }
}

/// A VM: a client connected, RAM mapped by fd, MSI on an eventfd feeding the guest's IRQ line.
pub fn connect(
    sock: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
) -> (Arc<VuBus>, Arc<GuestMemoryMmap<()>>, IrqLine, Arc<std::sync::atomic::AtomicU64>) {
    let mut c = Client::new(sock).unwrap();
    let (f, mem) = ram(dir, name);
    c.dma_map(0, 0, RAM, f.as_raw_fd()).unwrap();
    let efd = eventfd();
    c.set_irqs(IRQ_MSI, 4 | 32, 0, 1, &[efd.as_raw_fd()]).unwrap();
    let line = IrqLine::default();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (l, n) = (line.clone(), count.clone());
    std::thread::spawn(move || {
        let mut efd = efd;
        let mut b = [0u8; 8];
        while efd.read_exact(&mut b).is_ok() {
            n.fetch_add(u64::from_ne_bytes(b), Ordering::SeqCst);
            l.signal();
        }
    });
    (Arc::new(VuBus(Mutex::new(c))), mem, line, count)
}
