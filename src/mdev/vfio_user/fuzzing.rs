//! The entry point shared by the `vfio_user` fuzz target and its corpus replay under
//! `cargo test`: raw client bytes (and the descriptors a client may attach) sent to the server's
//! connection loop over a socket pair, in process, against one served vGPU that outlives every
//! input, as `shadowgpu serve`'s does across clients.
//!
//! Invariants: no panic, the connection ends cleanly when the client closes, and afterwards the
//! device holds nothing of the client: no memory map, no recorded map, no descriptor.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use vm_memory::GuestMemoryMmap;

use super::{Backend, ServedMemory, ServedStats};
use crate::hw::Platform;
use crate::mdev::GpuManager;

struct Served {
    _gpu: GpuManager,
    backend: Backend,
    stats: Arc<ServedStats>,
}

fn served() -> Result<&'static Mutex<Served>, String> {
    static CELL: OnceLock<Result<Mutex<Served>, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let gpu = GpuManager::software(Platform::Skylake).map_err(|e| e.to_string())?;
        let mem = ServedMemory::new(GuestMemoryMmap::new());
        let dev = gpu.create("GVTg_V5_8", mem.clone()).map_err(|e| e.to_string())?;
        let stats = Arc::new(ServedStats::default());
        let backend = Backend::new(dev, mem, stats.clone(), false);
        Ok(Mutex::new(Served { _gpu: gpu, backend, stats }))
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// A descriptor a chunk attaches.
fn attachment(kind: u8, arg: u8) -> Option<File> {
    // SAFETY: each call returns a fresh descriptor or -1 (checked); the File owns it.
    let fd: RawFd = unsafe {
        match kind % 4 {
            1 => libc::eventfd(0, 0),
            2 => {
                let fd = libc::memfd_create(c"fuzz-ram".as_ptr(), 0);
                if fd >= 0 {
                    libc::ftruncate(fd, libc::off_t::from(arg) << 16);
                }
                fd
            }
            3 => libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
            _ => return None,
        }
    };
    // SAFETY: a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

fn send(s: &UnixStream, bytes: &[u8], fd: Option<&File>) {
    let mut buf = bytes.to_vec();
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr pointing at live buffers; the one control message is built with the
    // CMSG macros inside `control`, which is large enough for one descriptor.
    unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if let Some(f) = fd {
            m.msg_control = control.as_mut_ptr().cast();
            m.msg_controllen = libc::CMSG_SPACE(4) as _;
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), f.as_raw_fd());
        }
        let _ = libc::sendmsg(s.as_raw_fd(), &m, libc::MSG_NOSIGNAL);
    }
}

/// Sends the chunks the bytes describe, `[kind, arg, len_lo, len_hi, bytes...]*` (`kind` 1
/// attaches an eventfd, 2 a memfd of `arg` × 64 KiB, 3 /dev/null), closes the client's end and
/// lets the server run to the end of the connection. `Ok` says whether the server answered
/// anything.
pub fn messages_bytes(data: &[u8]) -> Result<bool, String> {
    let served = served()?;
    let mut served = served.lock();
    let fds_before = open_fds();
    let (client, mut server) = UnixStream::pair().map_err(|e| e.to_string())?;
    let reader = client.try_clone().map_err(|e| e.to_string())?;
    let drain = std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let mut rest = data;
    while let Some((&[kind, arg, lo, hi], tail)) = rest.split_first_chunk::<4>() {
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        if bytes.is_empty() {
            continue;
        }
        let fd = attachment(kind, arg);
        send(&client, bytes, fd.as_ref());
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
    let result = served.backend.serve_client(&mut server);
    drop(server);
    let _ = client.shutdown(std::net::Shutdown::Both);
    drop(client);
    let answered = drain.join().map_err(|_| "the reply reader panicked".to_string())? > 0;
    let _ = result;
    if served.stats.mapped_regions.load(Ordering::SeqCst) != 0 || served.stats.unbacked_maps.load(Ordering::SeqCst) != 0
    {
        return Err("a departed client's memory maps are still held".into());
    }
    // Interrupt sinks end their delivery threads (and close their eventfds) a poll slice after
    // they are unwired.
    let t = std::time::Instant::now();
    while open_fds() > fds_before && t.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if open_fds() > fds_before {
        return Err(format!("descriptors leaked: {fds_before} before, {} after", open_fds()));
    }
    Ok(answered)
}

/// Representative inputs: a VERSION, a device info, a region-info sweep, a map with a memfd,
/// register reads and writes, an eventfd wired to MSI, a reset.
pub fn seeds() -> Vec<Vec<u8>> {
    let msg = |id: u16, cmd: u16, body: &[u8]| {
        let mut v = Vec::new();
        v.extend(id.to_le_bytes());
        v.extend(cmd.to_le_bytes());
        v.extend((16 + body.len() as u32).to_le_bytes());
        v.extend([0u8; 8]);
        v.extend_from_slice(body);
        v
    };
    let chunk = |kind: u8, arg: u8, m: Vec<u8>| {
        let mut v = vec![kind, arg];
        v.extend((m.len() as u16).to_le_bytes());
        v.extend(m);
        v
    };
    let dw = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let qw = |v: &[u64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let version = msg(1, 1, &[0, 0, 1, 0, b'{', b'}', 0]);
    let info = msg(2, 4, &dw(&[16, 0, 0, 0]));
    let region = |i: u32| msg(3, 5, &[dw(&[32, 0, i, 0]), qw(&[0, 0])].concat());
    let map = msg(4, 2, &[dw(&[32, 3]), qw(&[0, 0, 2 << 20])].concat());
    let read = |region: u32, off: u64, n: u32| msg(5, 9, &[qw(&[off]), dw(&[region, n])].concat());
    let write = |region: u32, off: u64, data: &[u8]| {
        msg(6, 10, &[qw(&[off]), dw(&[region, data.len() as u32]), data.to_vec()].concat())
    };
    let irqs = msg(7, 8, &dw(&[20, 4 | 32, 1, 0, 1]));
    let reset = msg(8, 13, &[]);
    let mut out = vec![
        [chunk(0, 0, version.clone()), chunk(0, 0, info), chunk(0, 0, region(0)), chunk(0, 0, region(9))].concat(),
        [chunk(0, 0, version.clone()), chunk(2, 32, map), chunk(0, 0, read(7, 0, 4)), chunk(0, 0, read(0, 0x2030, 4))]
            .concat(),
        [chunk(1, 0, irqs), chunk(0, 0, write(0, 0x44200, &[1, 0, 0, 0])), chunk(0, 0, reset)].concat(),
    ];
    out.push([chunk(0, 0, version), chunk(0, 0, write(7, 4, &[6, 0])), chunk(0, 0, read(2, 0x800_0000, 8))].concat());
    out.push(chunk(3, 0, msg(9, 9, &[qw(&[0]), dw(&[7, 4])].concat())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold() {
        for s in seeds() {
            assert_eq!(messages_bytes(&s), Ok(true));
        }
        assert_eq!(messages_bytes(&[]), Ok(false));
    }
}
