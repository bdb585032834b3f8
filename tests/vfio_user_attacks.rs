//! A hostile VMM client against `shadowgpu serve`'s server, over real sockets: malformed messages
//! of every kind, descriptors where none belong, memory that shrinks under the server, interrupt
//! descriptors that are not eventfds. Each costs at most that client its connection; a second
//! client on another socket of the same GPU keeps working throughout, and the attacked socket
//! serves the next client.

#![cfg(feature = "vfio-user")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::AddrSpace;
use shadowgpu::guest::{Bus, Driver};
use shadowgpu::hw::{Engine, Platform};
use shadowgpu::mdev::vfio_user::serve;
use shadowgpu::mdev::{GpuManager, REGION_CONFIG};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[path = "common/vu.rs"]
mod vu;
use vu::*;

/// Sends one raw message: a header with `command`, `size` (the header's message_size) and
/// `flags`, then `body`, with `fds` attached to the first byte.
fn send(s: &UnixStream, command: u16, size: u32, flags: u32, body: &[u8], fds: &[RawFd]) {
    let mut msg = Vec::new();
    msg.extend_from_slice(&7u16.to_le_bytes());
    msg.extend_from_slice(&command.to_le_bytes());
    msg.extend_from_slice(&size.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(body);
    let mut iov = libc::iovec { iov_base: msg.as_mut_ptr().cast(), iov_len: msg.len() };
    // SAFETY: CMSG_SPACE computes a size.
    let space = unsafe { libc::CMSG_SPACE((fds.len().max(1) * 4) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr pointing at live buffers; the control message is built with the
    // CMSG macros inside `control`.
    unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if !fds.is_empty() {
            m.msg_control = control.as_mut_ptr().cast();
            m.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
        let _ = libc::sendmsg(s.as_raw_fd(), &m, libc::MSG_NOSIGNAL);
    }
}

/// What the server did with a message: its reply's errno (0: success), or it closed.
fn outcome(s: &mut UnixStream) -> Option<u32> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size.saturating_sub(16)];
    s.read_exact(&mut rest).ok()?;
    let flags = u32::from_le_bytes(h[8..12].try_into().unwrap());
    Some(if flags & (1 << 5) != 0 { u32::from_le_bytes(h[12..16].try_into().unwrap()) } else { 0 })
}

fn eventfd_raw() -> File {
    // SAFETY: eventfd returns a fresh descriptor (checked), owned by the File.
    let fd = unsafe { libc::eventfd(0, 0) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor.
    unsafe { File::from_raw_fd(fd) }
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two fresh descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors, owned by the Files.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A client on `sock` that keeps submitting work and checking it until `stop`.
fn busy_client(sock: std::path::PathBuf, d: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let (bus, mem, line, _) = connect(&sock, &d, "ram-busy");
        let mut g = Driver::probe(bus.clone(), mem.clone(), (1 << 20, RAM - (1 << 20)), line).unwrap();
        let mut done = 0u64;
        while !stop.load(Ordering::SeqCst) || done == 0 {
            let e = [Engine::Rcs, Engine::Bcs][done as usize % 2];
            let mut c = CmdBuf::new();
            c.store_dword(AddrSpace::Ppgtt, g.data_va(), done as u32).bb_end();
            let s = g.submit(e, &c).unwrap();
            g.wait(e, s, T).unwrap();
            let got: u32 = mem.read_obj(GuestAddress(g.ppgtt_gpa(g.data_va()).unwrap())).unwrap();
            assert_eq!(got, done as u32);
            done += 1;
        }
        bus.0.lock().shutdown().unwrap();
        done
    })
}

/// A well-formed client can use `sock` (after an attack).
fn serves_a_new_client(sock: &std::path::Path, d: &std::path::Path) {
    let (bus, mem, line, _) = connect(sock, d, "ram-next");
    let mut g = Driver::probe(bus.clone(), mem.clone(), (1 << 20, RAM - (1 << 20)), line).unwrap();
    let mut c = CmdBuf::new();
    c.store_dword(AddrSpace::Ppgtt, g.data_va(), 0x5151).bb_end();
    let s = g.submit(Engine::Vcs, &c).unwrap();
    g.wait(Engine::Vcs, s, T).unwrap();
    let mut b = [0u8; 4];
    bus.read(REGION_CONFIG, 0, &mut b).unwrap();
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x8086);
    bus.0.lock().shutdown().unwrap();
}

#[test]
fn malformed_messages_of_every_kind_cost_only_their_connection() {
    let d = dir("attack-msgs");
    let gpu = GpuManager::software(Platform::Skylake).unwrap();
    let (sa, sb) = (d.join("a.sock"), d.join("b.sock"));
    let a = serve(&gpu, &sa, "GVTg_V5_8", false).unwrap();
    let b = serve(&gpu, &sb, "GVTg_V5_8", false).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = busy_client(sb.clone(), d.clone(), stop.clone());

    let ram_file = File::options().read(true).write(true).create(true).truncate(true).open(d.join("m")).unwrap();
    ram_file.set_len(1 << 20).unwrap();
    let (pr, _pw) = pipe();
    let efd = eventfd_raw();
    let dirfd = File::open(&d).unwrap();
    let le = |v: &[u64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let dw = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let dma_map = |off: u64, addr: u64, size: u64| [dw(&[32, 3]), le(&[off, addr, size])].concat();
    let access = |off: u64, region: u32, count: u32| [le(&[off]), dw(&[region, count])].concat();
    let set_irqs = |flags: u32, index: u32, start: u32, count: u32| dw(&[20, flags, index, start, count]);
    let (rfd, efd_fd, pfd, dfd) = (ram_file.as_raw_fd(), efd.as_raw_fd(), pr.as_raw_fd(), dirfd.as_raw_fd());

    // (what, command, message_size or 0 for "header + body", flags, body, fds)
    type Case = (&'static str, u16, u32, u32, Vec<u8>, Vec<RawFd>);
    let cases: Vec<Case> = vec![
        ("size below the header", 4, 8, 0, vec![], vec![]),
        ("size of nothing", 4, 0, 0, vec![], vec![]),
        ("size of 4 GiB", 10, u32::MAX, 0, vec![], vec![]),
        ("size past the largest transfer", 10, (2 << 20) + 32, 0, vec![], vec![]),
        ("unknown command", 99, 0, 0, vec![1, 2, 3, 4], vec![]),
        ("command 0", 0, 0, 0, vec![], vec![]),
        ("region I/O fds", 6, 0, 0, vec![0; 16], vec![]),
        ("DMA read", 11, 0, 0, vec![0; 32], vec![]),
        ("a reply from the client", 4, 0, 1, vec![0; 16], vec![]),
        ("short version", 1, 0, 0, vec![1, 0], vec![]),
        ("version with garbage capabilities", 1, 0, 0, [vec![0, 0, 1, 0], b"{{{not json".to_vec()].concat(), vec![]),
        ("short DMA map", 2, 0, 0, vec![0; 8], vec![]),
        ("DMA map with two files", 2, 0, 0, dma_map(0, 0x1000_0000, 4096), vec![rfd, rfd]),
        ("DMA map of a pipe", 2, 0, 0, dma_map(0, 0x1000_0000, 4096), vec![pfd]),
        ("DMA map of a directory", 2, 0, 0, dma_map(0, 0x1000_0000, 4096), vec![dfd]),
        ("DMA map past the file", 2, 0, 0, dma_map(4096, 0x1000_0000, 1 << 20), vec![rfd]),
        ("DMA map wrapping the file offset", 2, 0, 0, dma_map(u64::MAX - 10, 0x1000_0000, 4096), vec![rfd]),
        ("DMA map wrapping the address", 2, 0, 0, dma_map(0, u64::MAX - 10, 4096), vec![rfd]),
        ("DMA map of nothing", 2, 0, 0, dma_map(0, 0x1000_0000, 0), vec![rfd]),
        ("short DMA unmap", 3, 0, 0, vec![0; 4], vec![]),
        ("DMA unmap of nothing mapped", 3, 0, 0, [dw(&[24, 0]), le(&[0x5000_0000, 4096])].concat(), vec![]),
        ("DMA unmap wrapping", 3, 0, 0, [dw(&[24, 4]), le(&[u64::MAX, u64::MAX])].concat(), vec![]),
        ("short device info", 4, 0, 0, vec![0; 3], vec![]),
        ("region info of region 99", 5, 0, 0, dw(&[32, 0, 99, 0, 0, 0, 0, 0]), vec![]),
        ("region info of region 2^32-1", 5, 0, 0, dw(&[32, 0, u32::MAX, 0, 0, 0, 0, 0]), vec![]),
        ("short region info", 5, 0, 0, vec![0; 12], vec![]),
        ("interrupt info of index 99", 7, 0, 0, dw(&[16, 0, 99, 0]), vec![]),
        ("short interrupt info", 7, 0, 0, vec![0; 2], vec![]),
        ("SET_IRQS of index 99", 8, 0, 0, set_irqs(36, 99, 0, 1), vec![efd_fd]),
        ("SET_IRQS, one vector and no eventfd", 8, 0, 0, set_irqs(36, 1, 0, 1), vec![]),
        ("SET_IRQS, one vector and two eventfds", 8, 0, 0, set_irqs(36, 1, 0, 1), vec![efd_fd, efd_fd]),
        ("SET_IRQS of 1000 vectors", 8, 0, 0, set_irqs(36, 1, 0, 1000), vec![efd_fd]),
        ("SET_IRQS from vector 5", 8, 0, 0, set_irqs(36, 1, 5, 1), vec![efd_fd]),
        ("SET_IRQS with a pipe", 8, 0, 0, set_irqs(36, 1, 0, 1), vec![pfd]),
        ("SET_IRQS with a memory file", 8, 0, 0, set_irqs(36, 0, 0, 1), vec![rfd]),
        ("SET_IRQS boolean data", 8, 0, 0, [set_irqs(34, 1, 0, 1), vec![1]].concat(), vec![]),
        ("SET_IRQS without data, with a file", 8, 0, 0, set_irqs(33, 1, 0, 1), vec![efd_fd]),
        ("short SET_IRQS", 8, 0, 0, vec![0; 8], vec![]),
        ("read of 1 MiB + 1", 9, 0, 0, access(0, 0, (1 << 20) + 1), vec![]),
        ("read of 4 GiB", 9, 0, 0, access(0, 0, u32::MAX), vec![]),
        ("read of region 99", 9, 0, 0, access(0, 99, 4), vec![]),
        ("read at offset 2^64-2", 9, 0, 0, access(u64::MAX - 1, 0, 4), vec![]),
        ("read carrying files", 9, 0, 0, access(0, 7, 4), vec![rfd, efd_fd, pfd]),
        ("short read", 9, 0, 0, vec![0; 10], vec![]),
        ("write announcing more than it carries", 10, 0, 0, [access(0, 7, 64), vec![0; 4]].concat(), vec![]),
        ("write carrying more than it announces", 10, 0, 0, [access(0x40, 7, 4), vec![0; 64]].concat(), vec![]),
        ("write to region 99", 10, 0, 0, [access(0, 99, 4), vec![0; 4]].concat(), vec![]),
        ("write past BAR0", 10, 0, 0, [access(16 << 20, 0, 8), vec![0; 8]].concat(), vec![]),
        // Guest accesses the device refuses are answered as hardware would (dropped), not failed.
        (
            "write of garbage to the host's GTT entries (answered)",
            10,
            0,
            0,
            [access(8 << 20, 0, 64), vec![0xff; 64]].concat(),
            vec![],
        ),
        ("write to the read-only OpRegion (answered)", 10, 0, 0, [access(0, 9, 4), vec![1; 4]].concat(), vec![]),
        ("reset carrying a file", 13, 0, 0, vec![], vec![rfd]),
    ];
    let fds_before = open_fds();
    for (what, command, size, flags, body, fds) in &cases {
        let mut s = UnixStream::connect(&sa).unwrap();
        let size = if *size == 0 { 16 + body.len() as u32 } else { *size };
        send(&s, *command, size, *flags, body, fds);
        let got = outcome(&mut s);
        if what.ends_with("(answered)") {
            assert_eq!(got, Some(0), "{what}");
        } else {
            assert!(got != Some(0), "{what}: accepted");
        }
        drop(s);
        // The socket serves the next client (each attack ran on a fresh connection).
        let t = std::time::Instant::now();
        while a.stats().clients.load(Ordering::SeqCst) == 0 && t.elapsed() < T {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Maps without a file are recorded, never touched; a client cannot pile up more than the cap.
    let mut s = UnixStream::connect(&sa).unwrap();
    let mut refused = 0;
    for i in 0..shadowgpu::mdev::vfio_user::MAX_MAPS as u64 + 10 {
        send(&s, 2, 48, 0, &dma_map(0, i << 32, u64::MAX >> 8), &[]);
        if outcome(&mut s) != Some(0) {
            refused += 1;
        }
    }
    assert_eq!(refused, 10);
    drop(s);
    // Truncated messages: a partial header, a body that never comes.
    for partial in [vec![1u8, 0, 4], [vec![0; 4], 100u32.to_le_bytes().to_vec(), vec![0; 8]].concat()] {
        let mut s = UnixStream::connect(&sa).unwrap();
        s.write_all(&partial).unwrap();
        drop(s);
    }
    serves_a_new_client(&sa, &d);
    // No descriptor of any attack stayed open in the server.
    let t = std::time::Instant::now();
    while open_fds() > fds_before && t.elapsed() < T {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(open_fds() <= fds_before, "descriptors leaked: {} -> {}", fds_before, open_fds());
    stop.store(true, Ordering::SeqCst);
    let done = worker.join().unwrap();
    assert!(done > 0);
    a.stop();
    b.stop();
    let _ = std::fs::remove_dir_all(&d);
}

fn memfd(len: u64, seal: bool) -> File {
    let flags = if seal { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: memfd_create with a valid name; the result is checked and owned.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), flags) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    if seal {
        // SAFETY: fcntl on a descriptor `f` owns.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) }, 0);
    }
    f
}

#[test]
fn a_client_that_shrinks_its_memory_loses_only_its_own_connection() {
    let d = dir("attack-shrink");
    let gpu = GpuManager::software(Platform::Skylake).unwrap();
    let (sa, sb) = (d.join("a.sock"), d.join("b.sock"));
    let a = serve(&gpu, &sa, "GVTg_V5_8", false).unwrap();
    let b = serve(&gpu, &sb, "GVTg_V5_8", false).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = busy_client(sb.clone(), d.clone(), stop.clone());
    for sealed in [true, false] {
        // The attacker's RAM is a memfd (unsealed, as cloud-hypervisor creates it; or sealed
        // against shrinking, as QEMU does), mapped on both sides.
        let ram = memfd(RAM, sealed);
        let mut c = vfio_user::Client::new(&sa).unwrap();
        c.dma_map(0, 0, RAM, ram.as_raw_fd()).unwrap();
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges_with_files([(
                GuestAddress(0),
                RAM as usize,
                Some(vm_memory::FileOffset::new(ram.try_clone().unwrap(), 0)),
            )])
            .unwrap(),
        );
        let bus = Arc::new(VuBus(parking_lot::Mutex::new(c)));
        let line = shadowgpu::guest::IrqLine::default();
        let mut g = Driver::probe(bus.clone(), mem, (1 << 20, RAM - (1 << 20)), line).unwrap();
        let mut work = CmdBuf::new();
        work.store_dword(AddrSpace::Ppgtt, g.data_va(), 1).bb_end();
        g.submit(Engine::Rcs, &work).unwrap();
        let lrca = g.engine_objects(Engine::Bcs).unwrap().lrca;
        let shrunk = ram.set_len(0);
        assert_eq!(shrunk.is_ok(), !sealed, "a sealed memfd cannot shrink");
        // The server touches the memory again (this process's own mapping of it is not touched
        // from here on: it is the client's, and would fault too): a submission that reads the
        // context image and ring, and aperture accesses.
        let elsp = Engine::Bcs.mmio_base() + 0x230;
        for v in [0u32, 0, 1, (lrca | 3 << 3 | 1 << 8 | 1) as u32] {
            let _ = bus.write(shadowgpu::mdev::REGION_BAR0, u64::from(elsp), &v.to_le_bytes());
        }
        let mut page = [0u8; 8];
        let ap = g.pvinfo().aperture.base;
        let _ = bus.read(shadowgpu::mdev::REGION_BAR2, ap, &mut page);
        let _ = bus.read(shadowgpu::mdev::REGION_BAR2, ap + 0x1000, &mut page);
        std::thread::sleep(Duration::from_millis(100));
        let more = bus.read(REGION_CONFIG, 0, &mut page);
        if sealed {
            assert!(more.is_ok());
            assert_eq!(a.stats().memory_faults.load(Ordering::SeqCst), 0);
        } else {
            assert!(more.is_err(), "the client that shrank its memory is dropped");
            assert_eq!(a.stats().memory_faults.load(Ordering::SeqCst), 1);
        }
        std::mem::forget(g); // its drop would touch the (shrunk) memory
        let _ = bus.0.lock().shutdown();
    }
    serves_a_new_client(&sa, &d);
    stop.store(true, Ordering::SeqCst);
    assert!(worker.join().unwrap() > 0);
    a.stop();
    b.stop();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_full_interrupt_eventfd_stalls_nobody() {
    let d = dir("attack-irq");
    let gpu = GpuManager::software(Platform::Skylake).unwrap();
    let (sa, sb) = (d.join("a.sock"), d.join("b.sock"));
    let a = serve(&gpu, &sa, "GVTg_V5_8", false).unwrap();
    let b = serve(&gpu, &sb, "GVTg_V5_8", false).unwrap();
    let (bus, mem, line, _) = connect(&sa, &d, "ram-a");
    let mut g = Driver::probe(bus.clone(), mem, (1 << 20, RAM - (1 << 20)), line).unwrap();
    // (A pipe or another file in place of an eventfd is refused: see the malformed messages.)
    // An eventfd the client filled and never reads: its interrupts go nowhere, nothing waits.
    let efd = eventfd_raw();
    (&efd).write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
    bus.0.lock().set_irqs(1, 4 | 32, 0, 1, &[efd.as_raw_fd()]).unwrap();
    for i in 0..100u32 {
        let mut c = CmdBuf::new();
        c.store_dword(AddrSpace::Ppgtt, g.data_va(), i).user_interrupt().bb_end();
        let _ = g.submit(Engine::Rcs, &c);
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(true));
    let worker = busy_client(sb.clone(), d.clone(), stop.clone());
    done.store(worker.join().unwrap(), Ordering::SeqCst);
    assert!(done.load(Ordering::SeqCst) > 0);
    drop(g);
    bus.0.lock().shutdown().unwrap();
    a.stop();
    b.stop();
    let _ = std::fs::remove_dir_all(&d);
}
