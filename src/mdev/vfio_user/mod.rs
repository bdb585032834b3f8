//! Serving vGPUs to external VMMs over vfio-user (feature `vfio-user`): cloud-hypervisor
//! (`--user-device socket=PATH`) and QEMU >= 10.1 (`-device vfio-user-pci,socket=...`).
//!
//! Each socket serves one vGPU of one [`GpuManager`]; several sockets share the GPU, each
//! client a different VMM process. The vGPU lives as long as the socket: a client connecting
//! finds it reset; guest memory arrives as DMA maps with file descriptors and is mapped (maps
//! without one, such as BIOS areas, are accepted and never touched); interrupts go to the
//! client's eventfds. When a client disconnects, even mid-work, its queued work is dropped, the
//! device is reset, its memory maps and eventfds are closed, and the socket waits for the next
//! client; other sockets are not affected.
//!
//! Every message is guest-controlled input from the VMM's side: a guest access the device
//! refuses is logged and answered as the hardware would (reads return zeros), never turned into
//! a failed reply the client would drop the connection over. A map whose file is shorter than
//! the mapped range is refused (touching it would fault the server). A client that shrinks its
//! file after mapping it cannot bring the server down: maps are guarded (`mdev::memguard`), the
//! faulting access completes on a zero page, and the client's connection ends at its next
//! message, with its device reset; other clients see nothing of it.

pub mod conn;
pub mod fuzzing;
pub mod wire;

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};

use super::device::{IrqTrigger, MdevDevice, IRQ_INTX, IRQ_MSI, NUM_IRQS, NUM_REGIONS};
use super::manager::{GpuManager, ManagerError};
use super::memguard::{self, ClientMapping};
use crate::vgpu::UnknownReg;
use conn::Refusal;

/// Most DMA maps one client may hold (with and without a file): a VMM maps a handful of RAM
/// and ROM regions.
pub const MAX_MAPS: usize = 256;

/// Guest memory as a served vGPU sees it: replaced as the client maps and unmaps.
pub type ServedMemory = GuestMemoryAtomic<GuestMemoryMmap<ClientMapping>>;

use wire::{
    IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE,
};

/// Errors of the vfio-user server.
#[derive(Debug, thiserror::Error)]
pub enum VfioUserError {
    /// The vGPU could not be created.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The socket could not be set up.
    #[error("socket {path}: {why}")]
    Socket {
        /// Path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Counters of one served vGPU.
#[derive(Debug, Default)]
pub struct ServedStats {
    /// Clients served (connections accepted and closed).
    pub clients: AtomicU64,
    /// Guest accesses the device refused (logged, answered as hardware would).
    pub refused_accesses: AtomicU64,
    /// Memory regions currently mapped.
    pub mapped_regions: AtomicU64,
    /// DMA maps without a file descriptor (accepted, never touched) currently recorded.
    pub unbacked_maps: AtomicU64,
    /// Clients disconnected because their memory faulted (they shrank a mapped file).
    pub memory_faults: AtomicU64,
}

/// One socket being served.
pub struct Served {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<UnknownReg>>>,
    stats: Arc<ServedStats>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("path", &self.path).finish()
    }
}

impl Served {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters.
    pub fn stats(&self) -> &ServedStats {
        &self.stats
    }

    /// Waits for the serving thread to end (after [`Served::stop`], or after one client with
    /// `once`), and returns the registers the guests touched that the model does not track.
    pub fn join(mut self) -> Vec<UnknownReg> {
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }

    /// Stops serving once the current client (if any) disconnects; returns what [`Served::join`]
    /// returns.
    pub fn stop(self) -> Vec<UnknownReg> {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept with a connection that closes at once.
        let _ = UnixStream::connect(&self.path);
        self.join()
    }
}

/// Serves a new vGPU of type `ty` on `socket` (which must not exist). With `once`, the thread
/// ends after its first client disconnects.
pub fn serve(manager: &GpuManager, socket: &Path, ty: &str, once: bool) -> Result<Served, VfioUserError> {
    let mem = ServedMemory::new(GuestMemoryMmap::new());
    let dev = manager.create(ty, mem.clone())?;
    let sock_err = |e: std::io::Error| VfioUserError::Socket { path: socket.to_path_buf(), why: e.to_string() };
    if socket.exists() {
        return Err(VfioUserError::Socket { path: socket.to_path_buf(), why: "the path exists".into() });
    }
    let listener = UnixListener::bind(socket).map_err(sock_err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ServedStats::default());
    let (st, stp) = (stats.clone(), stop.clone());
    let path = socket.to_path_buf();
    let thread = std::thread::Builder::new()
        .name(format!("vfio-user {}", socket.display()))
        .spawn(move || {
            let trace = std::env::var_os(TRACE_ENV).is_some_and(|v| v != "0");
            let mut backend = Backend::new(dev, mem, st, trace);
            while !stp.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else { continue };
                if stp.load(Ordering::SeqCst) {
                    break;
                }
                let r = backend.serve_client(&mut stream);
                match r {
                    Ok(()) => {}
                    Err(e) => log(&format!("vGPU {}: connection ended: {e}", backend.id())),
                }
                if once {
                    break;
                }
            }
            let _ = std::fs::remove_file(&path);
            backend.unknown
        })
        .map_err(sock_err)?;
    Ok(Served { path: socket.to_path_buf(), stop, thread: Some(thread), stats })
}

fn log(msg: &str) {
    eprintln!("shadowgpu serve: {msg}");
}

/// The served vGPU and what its current client gave it.
pub(crate) struct Backend {
    dev: MdevDevice<ServedMemory>,
    mem: ServedMemory,
    unbacked: Vec<(u64, u64)>,
    stats: Arc<ServedStats>,
    /// The client's memory faulted: every message fails until it disconnects.
    poisoned: bool,
    /// Log every region access (see [`TRACE_ENV`]).
    trace: bool,
    /// Untracked registers touched by every client so far, with the values they left (collected
    /// before each device reset, which clears the values).
    unknown: Vec<UnknownReg>,
}

/// Adds `new` to `into` (sorted by offset): access flags accumulate, the newer value wins.
fn merge_unknown(into: &mut Vec<UnknownReg>, new: Vec<UnknownReg>) {
    for u in new {
        match into.binary_search_by_key(&u.offset, |x| x.offset) {
            Ok(i) => {
                if let Some(x) = into.get_mut(i) {
                    x.read |= u.read;
                    x.written |= u.written;
                    x.value = u.value;
                }
            }
            Err(i) => into.insert(i, u),
        }
    }
}

/// Set this environment variable (to anything but `0`) to log every region access of every client
/// to standard error as `vGPU N: R|W region offset value` (slow; for bringing up a guest driver).
pub const TRACE_ENV: &str = "SHADOWGPU_TRACE_ACCESSES";

fn trace_value(data: &[u8]) -> u64 {
    data.iter().rev().fold(0u64, |v, b| v << 8 | u64::from(*b))
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

impl Backend {
    pub(crate) fn new(dev: MdevDevice<ServedMemory>, mem: ServedMemory, stats: Arc<ServedStats>, trace: bool) -> Self {
        Backend { dev, mem, unbacked: Vec::new(), stats, poisoned: false, trace, unknown: Vec::new() }
    }

    /// Serves one client until it leaves (or breaks the protocol, or its memory faults), then
    /// drops everything it gave the device and resets it for the next client.
    pub(crate) fn serve_client(&mut self, stream: &mut UnixStream) -> Result<(), conn::ConnError> {
        let r = conn::serve_connection(stream, self);
        self.disconnected();
        r
    }

    fn id(&self) -> u32 {
        self.dev.vgpu().params().id
    }

    fn refused(&self, what: &str, e: &dyn std::fmt::Display) {
        self.stats.refused_accesses.fetch_add(1, Ordering::Relaxed);
        log(&format!("vGPU {}: {what}: {e}", self.id()));
    }

    /// Replaces the guest memory map with `change(current)` under the map's lock, and counts its
    /// regions.
    fn update_memory(
        &self,
        change: impl FnOnce(&GuestMemoryMmap<ClientMapping>) -> Result<GuestMemoryMmap<ClientMapping>, std::io::Error>,
    ) -> Result<(), std::io::Error> {
        let g = self.mem.lock().map_err(|_| io_err("memory map lock poisoned".into()))?;
        let new = change(&vm_memory::GuestAddressSpace::memory(&self.mem))?;
        let n = new.num_regions() as u64;
        g.replace(new);
        self.stats.mapped_regions.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// Fails if the client's memory faulted since it was mapped (the client shrank a file it
    /// mapped): the connection then ends, which resets the device and drops its memory.
    fn check_memory(&mut self) -> Result<(), String> {
        if self.poisoned {
            return Err("the client's memory faulted".into());
        }
        let faults: u64 = vm_memory::GuestAddressSpace::memory(&self.mem).iter().map(|r| r.bitmap().faults()).sum();
        if faults == 0 {
            return Ok(());
        }
        self.poisoned = true;
        self.stats.memory_faults.fetch_add(1, Ordering::Relaxed);
        Err(format!("guest memory shrank under the server ({faults} faulting accesses): dropping the client"))
    }

    /// Records the untracked registers touched so far, before a reset clears their values.
    fn collect_unknown(&mut self) {
        merge_unknown(&mut self.unknown, self.dev.vgpu().unknown_registers());
    }

    /// The client went away: drop its work, memory and eventfds; reset the device for the next.
    fn disconnected(&mut self) {
        self.collect_unknown();
        if let Some(s) = self.dev.vgpu().engines().stats() {
            let rejected: u64 = s.rejections.values().sum();
            log(&format!(
                "vGPU {}: client left: {} workloads completed, {} failed, {} cancelled, {} refused ({:?}), \
                 {:.1} ms engine time, {} KiB scanned",
                self.id(),
                s.completed,
                s.failed,
                s.cancelled,
                rejected,
                s.rejections,
                s.total_engine_ns() as f64 / 1e6,
                s.scanned_bytes / 1024
            ));
            if let Some(why) = &s.last_failure {
                log(&format!("vGPU {}: the last failed workload: {why}", self.id()));
            }
            if s.dropped_total != 0 || s.dropped_commands != 0 {
                let kinds: Vec<String> =
                    s.dropped_accesses.iter().map(|((reg, access), n)| format!("{reg:#x} {access:?}: {n}")).collect();
                log(&format!(
                    "vGPU {}: non-privileged batches: {} register accesses ({}) and {} commands dropped, as the \
                     hardware drops them",
                    self.id(),
                    s.dropped_total,
                    kinds.join(", "),
                    s.dropped_commands
                ));
            }
        }
        let _ = self.dev.set_irq(IRQ_MSI, None);
        let _ = self.dev.set_irq(IRQ_INTX, None);
        if let Err(e) = self.dev.reset() {
            log(&format!("vGPU {}: reset after disconnect: {e}", self.id()));
        }
        self.dev.vgpu().engines().wait_idle();
        if let Ok(g) = self.mem.lock() {
            g.replace(GuestMemoryMmap::new());
        }
        self.unbacked.clear();
        self.poisoned = false;
        self.stats.mapped_regions.store(0, Ordering::Relaxed);
        self.stats.unbacked_maps.store(0, Ordering::Relaxed);
        // Counted last: a client counted as served has left nothing behind.
        self.stats.clients.fetch_add(1, Ordering::Release);
    }
}

fn refuse(e: impl std::fmt::Display) -> Refusal {
    Refusal::invalid(e.to_string())
}

impl conn::Device for Backend {
    fn counts(&self) -> (u32, u32) {
        (NUM_REGIONS, NUM_IRQS)
    }

    fn region_info(&self, index: u32) -> Option<wire::RegionInfo> {
        if index >= NUM_REGIONS {
            return None;
        }
        let r = self.dev.region_info(index);
        Some(wire::RegionInfo {
            argsz: std::mem::size_of::<wire::RegionInfo>() as u32,
            flags: r.as_ref().map_or(0, |r| r.flags.bits()),
            index,
            cap_offset: 0,
            size: r.map_or(0, |r| r.size),
            offset: 0,
        })
    }

    fn irq_info(&self, index: u32) -> Option<wire::IrqInfo> {
        let i = self.dev.irq_info(index)?;
        let argsz = std::mem::size_of::<wire::IrqInfo>() as u32;
        Some(wire::IrqInfo { argsz, flags: i.flags.bits(), index: i.index, count: i.count })
    }

    fn healthy(&mut self) -> Result<(), String> {
        self.check_memory()
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Refusal> {
        if let Err(e) = self.dev.read(region, offset, data) {
            if matches!(e, super::MdevError::NoRegion(_) | super::MdevError::OutOfRange { .. }) {
                return Err(refuse(e));
            }
            self.refused("read", &e);
        }
        if self.trace {
            log(&format!("vGPU {}: R {region} {offset:#08x} {:#x}/{}", self.id(), trace_value(data), data.len()));
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Refusal> {
        if self.trace {
            log(&format!("vGPU {}: W {region} {offset:#08x} {:#x}/{}", self.id(), trace_value(data), data.len()));
        }
        if let Err(e) = self.dev.write(region, offset, data) {
            if matches!(e, super::MdevError::NoRegion(_) | super::MdevError::OutOfRange { .. }) {
                return Err(refuse(e));
            }
            self.refused("write", &e);
        }
        Ok(())
    }

    fn dma_map(&mut self, map: &wire::DmaMap, fd: Option<File>) -> Result<(), Refusal> {
        let (offset, address, size) = (map.offset, map.address, map.size);
        if size == 0 || address.checked_add(size).is_none() {
            return Err(Refusal::invalid(format!("DMA map of {size:#x} bytes at {address:#x}")));
        }
        let maps = self.unbacked.len() + vm_memory::GuestAddressSpace::memory(&self.mem).num_regions();
        if maps >= MAX_MAPS {
            return Err(Refusal { errno: libc::ENOSPC, why: format!("more than {MAX_MAPS} DMA maps") });
        }
        let Some(file) = fd else {
            self.unbacked.push((address, size));
            self.stats.unbacked_maps.store(self.unbacked.len() as u64, Ordering::Relaxed);
            return Ok(());
        };
        let len = file.metadata().map_err(refuse)?.len();
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(Refusal::invalid(format!(
                "DMA map: {size:#x} bytes at file offset {offset:#x} exceed the file ({len:#x})"
            )));
        }
        let region = memguard::map_file(&file, offset, size, address).map_err(|e| refuse(format!("DMA map: {e}")))?;
        self.update_memory(|m| {
            m.insert_region(Arc::new(region)).map_err(|e| io_err(format!("DMA map at {address:#x}: {e}")))
        })
        .map_err(refuse)
    }

    fn dma_unmap(&mut self, unmap: &wire::DmaUnmap) -> Result<(), Refusal> {
        let (address, size) = (unmap.address, unmap.size);
        if let Some(i) = self.unbacked.iter().position(|&(a, s)| a == address && s == size) {
            self.unbacked.swap_remove(i);
            self.stats.unbacked_maps.store(self.unbacked.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        self.update_memory(|m| {
            m.remove_region(GuestAddress(address), size)
                .map(|(new, _)| new)
                .map_err(|e| io_err(format!("DMA unmap {address:#x}: {e}")))
        })
        .map_err(refuse)
    }

    fn reset(&mut self) -> Result<(), Refusal> {
        self.collect_unknown();
        self.dev.reset().map_err(refuse)
    }

    fn set_irqs(&mut self, set: &wire::SetIrqs, fds: Vec<File>) -> Result<(), Refusal> {
        let (index, flags, start, count) = (set.index, set.flags, set.start, set.count);
        if index != IRQ_INTX && index != IRQ_MSI {
            return if count == 0 {
                Ok(())
            } else {
                Err(Refusal::invalid(format!("interrupt index {index} has no vectors")))
            };
        }
        if start != 0 || count > 1 {
            return Err(Refusal::invalid(format!("interrupt {index}: vectors {start}+{count} (one vector only)")));
        }
        if flags & IRQ_SET_DATA_BOOL != 0 {
            return Err(Refusal::invalid("boolean interrupt data is not supported"));
        }
        let e = |r: Result<(), super::MdevError>| r.map_err(refuse);
        match (flags & 0x38, flags & 0x7) {
            (IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD) => {
                let t = if count == 0 { None } else { fds.into_iter().next().map(IrqTrigger::Eventfd) };
                e(self.dev.set_irq(index, t))
            }
            // Fire it now (a test of the wiring).
            (IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_NONE) if count == 1 => {
                self.dev.fire_irq(index);
                Ok(())
            }
            (IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_NONE) => e(self.dev.set_irq(index, None)),
            (IRQ_SET_ACTION_MASK, IRQ_SET_DATA_NONE) if index == IRQ_INTX => {
                self.dev.mask_intx(true);
                Ok(())
            }
            (IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_NONE) if index == IRQ_INTX => {
                self.dev.mask_intx(false);
                Ok(())
            }
            _ => Err(Refusal::invalid(format!("interrupt {index}: unsupported SET_IRQS flags {flags:#x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(offset: u32, read: bool, written: bool, value: u32) -> UnknownReg {
        UnknownReg { offset, read, written, value }
    }

    #[test]
    fn untracked_registers_accumulate_across_resets() {
        let mut seen = Vec::new();
        merge_unknown(&mut seen, vec![reg(0x64838, true, true, 0xffff_ffff), reg(0xfdc, true, false, 0)]);
        merge_unknown(&mut seen, vec![reg(0x64838, true, false, 0), reg(0x4dd4, false, true, 7)]);
        assert_eq!(seen, vec![reg(0xfdc, true, false, 0), reg(0x4dd4, false, true, 7), reg(0x64838, true, true, 0)]);
    }
}
