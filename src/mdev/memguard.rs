//! Guest memory mapped from a file a VMM client handed in, guarded against the file shrinking
//! under the server.
//!
//! A client owns the file behind its DMA maps. If it truncates the file (cloud-hypervisor creates
//! its RAM memfd without sealing, so nothing stops it), the next access to a page past the new end
//! raises SIGBUS in whichever server thread touches it: an engine thread every vGPU shares, or
//! another client's thread. This module installs one process-wide SIGBUS handler. A fault inside
//! a registered client mapping replaces the faulting page with a private zero page (the access
//! then completes: reads see zeros, writes land nowhere the client sees) and counts the fault on
//! that mapping; the client's connection is then ended by its own serving thread (see
//! `mdev::vfio_user`). Any other SIGBUS goes to the handler that was installed before, so faults
//! that are not a client's still crash the process as they should.
//!
//! The handler only touches atomics and calls mmap(2); a mapping is unregistered, and in-flight
//! handlers drained, before it is unmapped, so the handler never maps over an address that is no
//! longer the client's. Sealed memory (F_SEAL_SHRINK) never faults; it needs no other path.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Once, OnceLock};

use vm_memory::bitmap::{Bitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// Client mappings that can be registered at once.
const SLOTS: usize = 8192;
/// statfs magic of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// One registered mapping: `[start, end)` in this process, the page size it faults in, faults
/// seen, and handlers currently looking at it.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    page: AtomicUsize,
    faults: AtomicU64,
    active: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    page: AtomicUsize::new(0),
    faults: AtomicU64::new(0),
    active: AtomicUsize::new(0),
};
static REGISTRY: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Serialises registration (the handler never takes it).
static REGISTER: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
static INSTALL: Once = Once::new();
/// The SIGBUS disposition before ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Errors mapping a client's file.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// mmap, fstatfs or sigaction failed.
    #[error("{what}: {why}")]
    Os {
        /// The call.
        what: &'static str,
        /// Its error.
        why: std::io::Error,
    },
    /// Every registry slot is in use.
    #[error("too many guest memory maps ({SLOTS})")]
    Full,
    /// The map does not fit the guest address space or the process.
    #[error("a map of {size:#x} bytes at guest address {gpa:#x} is not possible")]
    Bad {
        /// Guest address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// vm-memory refused the region.
    #[error("guest memory region: {0}")]
    Region(String),
}

fn os(what: &'static str) -> GuardError {
    GuardError::Os { what, why: std::io::Error::last_os_error() }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { info.as_ref().map_or(0, |i| i.si_addr() as usize) };
    for slot in &REGISTRY {
        slot.active.fetch_add(1, SeqCst);
        let (start, end, page) = (slot.start.load(SeqCst), slot.end.load(SeqCst), slot.page.load(SeqCst));
        if start != 0 && (start..end).contains(&addr) && page != 0 {
            let at = addr & !(page - 1);
            // SAFETY: `[at, at + page)` lies inside a mapping this module created and still owns
            // (unregistration waits for `active` to drain before unmapping it); MAP_FIXED replaces
            // that part of it with private anonymous memory.
            let p = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            slot.faults.fetch_add(1, SeqCst);
            slot.active.fetch_sub(1, SeqCst);
            if p != libc::MAP_FAILED {
                return; // the faulting access is retried and completes
            }
            break;
        }
        slot.active.fetch_sub(1, SeqCst);
    }
    chain(sig, info, ctx);
}

/// Hands a SIGBUS that is not a client's to the previous disposition.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREVIOUS.get().map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // Restore the default action: the access faults again on return and the process ends
        // as it would have without us.
        // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        return;
    }
    let flags = PREVIOUS.get().map_or(0, |p| p.sa_flags);
    // SAFETY: `prev` is the handler the process had installed, called as its flags say it
    // expects to be called.
    unsafe {
        if flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(prev);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev);
            f(sig);
        }
    }
}

fn install() -> Result<(), GuardError> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: sigaction with a valid handler of the SA_SIGINFO signature; `old` receives the
        // previous disposition.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &act, &mut old) != 0 {
                result = Err(os("sigaction(SIGBUS)"));
                return;
            }
            let _ = PREVIOUS.set(old);
        }
    });
    result
}

/// The page size faults in `file` are handled at: the huge page size on hugetlbfs.
fn page_size(file: &File) -> Result<usize, GuardError> {
    // SAFETY: sysconf has no preconditions.
    let base = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // SAFETY: fstatfs fills the zeroed struct for a descriptor `file` owns.
    let st = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(file.as_raw_fd(), &mut st) != 0 {
            return Err(os("fstatfs"));
        }
        st
    };
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 == HUGETLBFS_MAGIC {
        return usize::try_from(st.f_bsize).map_err(|_| GuardError::Bad { gpa: 0, size: 0 });
    }
    Ok(base)
}

/// A client mapping: owns the mmap of the client's file and its registry slot. It is the
/// region's "bitmap" (vm-memory drops it with the region, after the last access), tracks no
/// dirty pages, and unmaps after unregistering.
#[derive(Debug)]
pub struct ClientMapping {
    addr: usize,
    len: usize,
    slot: usize,
}

impl ClientMapping {
    /// SIGBUS faults this mapping has absorbed (the client shrank its file under it).
    pub fn faults(&self) -> u64 {
        REGISTRY.get(self.slot).map_or(0, |s| s.faults.load(SeqCst))
    }
}

impl Drop for ClientMapping {
    fn drop(&mut self) {
        if let Some(s) = REGISTRY.get(self.slot) {
            s.start.store(0, SeqCst);
            s.end.store(0, SeqCst);
            while s.active.load(SeqCst) != 0 {
                std::hint::spin_loop();
            }
        }
        // SAFETY: `[addr, addr + len)` is the mapping this object created and owns; nobody
        // accesses it any more (vm-memory drops the bitmap with the region).
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
        }
    }
}

impl WithBitmapSlice<'_> for ClientMapping {
    type S = ();
}

impl Bitmap for ClientMapping {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

/// Maps `size` bytes of `file` from `offset` as guest memory at `gpa`, guarded against SIGBUS.
pub fn map_file(file: &File, offset: u64, size: u64, gpa: u64) -> Result<GuestRegionMmap<ClientMapping>, GuardError> {
    install()?;
    let bad = GuardError::Bad { gpa, size };
    let len = usize::try_from(size).map_err(|_| GuardError::Bad { gpa, size })?;
    let off = libc::off_t::try_from(offset).map_err(|_| GuardError::Bad { gpa, size })?;
    if len == 0 || gpa.checked_add(size).is_none() {
        return Err(bad);
    }
    let page = page_size(file)?;
    // SAFETY: a new shared mapping of the client's file; the kernel picks the address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            off,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os("mmap"));
    }
    let addr = p as usize;
    let slot = {
        let _g = REGISTER.lock();
        let free = REGISTRY.iter().position(|s| s.start.load(SeqCst) == 0 && s.active.load(SeqCst) == 0);
        match free.and_then(|i| REGISTRY.get(i).map(|s| (i, s))) {
            Some((i, s)) => {
                s.faults.store(0, SeqCst);
                s.page.store(page, SeqCst);
                s.end.store(addr + len, SeqCst);
                s.start.store(addr, SeqCst);
                Some(i)
            }
            None => None,
        }
    };
    let Some(slot) = slot else {
        // SAFETY: the mapping just created above, never shared.
        unsafe { libc::munmap(p, len) };
        return Err(GuardError::Full);
    };
    let owner = ClientMapping { addr, len, slot };
    // SAFETY: `[p, p + len)` is a valid mapping owned by `owner`, which the region keeps alive
    // (as its bitmap) as long as the region exists.
    let region = unsafe {
        MmapRegionBuilder::new_with_bitmap(len, owner)
            .with_raw_mmap_pointer(p.cast())
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
    }
    .map_err(|e| GuardError::Region(e.to_string()))?;
    GuestRegionMmap::new(region, GuestAddress(gpa)).ok_or(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

    fn memfd(len: u64) -> File {
        // SAFETY: memfd_create with a valid name; the result is checked and then owned.
        let fd = unsafe { libc::memfd_create(c"guard-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn a_shrunk_file_costs_its_mapping_not_the_process() {
        let f = memfd(0x4000);
        let region = map_file(&f, 0, 0x4000, 0x10_0000).unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        mem.write_obj(0xabcd_u32, GuestAddress(0x10_3000)).unwrap();
        f.set_len(0x1000).unwrap(); // the client shrinks its RAM
                                    // The access faults, is absorbed, and completes on a zero page.
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10_3000)).unwrap(), 0);
        mem.write_obj(7u32, GuestAddress(0x10_2000)).unwrap();
        let faults: u64 = mem.iter().map(|r| r.bitmap().faults()).sum();
        assert_eq!(faults, 2);
        // The part still in the file is the client's.
        mem.write_obj(5u32, GuestAddress(0x10_0000)).unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).unwrap();
        assert_eq!(u32::from_ne_bytes(b), 5);
    }
}
