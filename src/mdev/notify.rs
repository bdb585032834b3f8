//! Interrupts delivered to an eventfd a VMM handed in, without ever blocking the thread that
//! raises them.
//!
//! The file descriptor belongs to the VMM (for vfio-user, to a client that may be hostile): it may
//! be something else than an eventfd, and an eventfd's counter can be filled so that a write
//! blocks (its file status flags are the VMM's to set). Interrupts are
//! raised on the scheduler's engine threads, which every vGPU shares, so the write happens
//! elsewhere: [`EventfdSink::signal`] sets a pending flag and wakes one thread per sink, which
//! writes the eventfd. Signals that arrive while one is pending coalesce (an eventfd counts, and
//! one wake-up is all a VMM's interrupt injection needs). A sink that refuses writes stalls only
//! its own thread.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{bounded, Receiver, Sender};

/// How long the delivery thread waits for a full eventfd before it looks whether it should stop.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Why a file descriptor cannot be an interrupt sink.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The descriptor is not an eventfd.
    #[error("interrupt file descriptor {fd} is not an eventfd ({what})")]
    NotEventfd {
        /// The descriptor in this process.
        fd: i32,
        /// What it is.
        what: String,
    },
    /// Setting it up failed.
    #[error("interrupt file descriptor {fd}: {why}")]
    Setup {
        /// The descriptor in this process.
        fd: i32,
        /// Why.
        why: std::io::Error,
    },
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Signals raised.
    pub signals: AtomicU64,
    /// Writes that reached the eventfd.
    pub delivered: AtomicU64,
    /// Writes the eventfd refused (its counter was full: the VMM is not reading it).
    pub refused: AtomicU64,
}

struct Inner {
    file: File,
    pending: AtomicBool,
    stop: AtomicBool,
    stats: SinkStats,
}

/// An eventfd interrupts are delivered to by a thread of its own.
pub struct EventfdSink {
    inner: Arc<Inner>,
    wake: Sender<()>,
}

impl std::fmt::Debug for EventfdSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventfdSink").field("fd", &self.inner.file.as_raw_fd()).finish()
    }
}

/// Whether `file` is an eventfd (its /proc link names the eventfd anonymous inode).
fn check_eventfd(file: &File) -> Result<(), NotifyError> {
    let fd = file.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|why| NotifyError::Setup { fd, why })?;
    let what = link.to_string_lossy().into_owned();
    if what == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(NotifyError::NotEventfd { fd, what })
    }
}

/// Waits up to `timeout` for `file` to accept a write.
fn writable(file: &File, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLOUT != 0
}

impl EventfdSink {
    /// Takes `file` as the sink of one interrupt; `name` names its delivery thread. Refuses what
    /// is not an eventfd. Its file status flags are left alone: they belong to the VMM too (the
    /// open file is shared), so the delivery thread polls for room before it writes instead.
    pub fn new(file: File, name: String) -> Result<Self, NotifyError> {
        check_eventfd(&file)?;
        let inner = Arc::new(Inner {
            file,
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stats: SinkStats::default(),
        });
        let (wake, rx) = bounded(1);
        let worker = inner.clone();
        let fd = worker.file.as_raw_fd();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || deliver(&worker, &rx))
            .map_err(|why| NotifyError::Setup { fd, why })?;
        Ok(EventfdSink { inner, wake })
    }

    /// Raises the interrupt. Never blocks.
    pub fn signal(&self) {
        self.inner.stats.signals.fetch_add(1, Ordering::Relaxed);
        if !self.inner.pending.swap(true, Ordering::AcqRel) {
            // A full channel means a wake-up is already queued.
            let _ = self.wake.try_send(());
        }
    }

    /// The counters.
    pub fn stats(&self) -> &SinkStats {
        &self.inner.stats
    }
}

impl Drop for EventfdSink {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        let _ = self.wake.try_send(());
    }
}

/// The delivery thread: one eventfd write per wake-up that found the interrupt pending.
fn deliver(inner: &Inner, wake: &Receiver<()>) {
    while wake.recv().is_ok() {
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        if !inner.pending.swap(false, Ordering::AcqRel) {
            continue;
        }
        loop {
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
            if writable(&inner.file, POLL_SLICE) {
                break;
            }
        }
        // An eventfd write is all or nothing: 8 bytes or an error.
        match (&inner.file).write_all(&1u64.to_ne_bytes()) {
            Ok(()) => inner.stats.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => inner.stats.refused.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;
    use std::time::Instant;

    fn eventfd() -> File {
        // SAFETY: eventfd returns a new descriptor (or -1, checked) that the File then owns.
        let fd = unsafe { libc::eventfd(0, 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        unsafe { File::from_raw_fd(fd) }
    }

    /// The VMM's end: the same open file (a blocking eventfd).
    fn clone_blocking(f: &File) -> File {
        f.try_clone().unwrap()
    }

    fn read_counter(f: &File) -> u64 {
        let mut b = [0u8; 8];
        (&*f).read_exact(&mut b).map_or(0, |_| u64::from_ne_bytes(b))
    }

    #[test]
    fn refuses_what_is_not_an_eventfd() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two new descriptors, which the Files below then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (r, _w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        assert!(matches!(EventfdSink::new(r, "t".into()), Err(NotifyError::NotEventfd { .. })));
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(EventfdSink::new(f, "t".into()), Err(NotifyError::NotEventfd { .. })));
    }

    #[test]
    fn delivers_and_coalesces() {
        let fd = eventfd();
        let vmm = clone_blocking(&fd);
        let sink = EventfdSink::new(fd, "t".into()).unwrap();
        sink.signal();
        let t0 = Instant::now();
        while sink.stats().delivered.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert_eq!(read_counter(&vmm), 1);
    }

    #[test]
    fn a_full_eventfd_never_blocks_the_signalling_thread() {
        let fd = eventfd();
        let vmm = clone_blocking(&fd);
        // The VMM fills the counter: a blocking write would now wait until it reads.
        (&vmm).write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
        let sink = EventfdSink::new(fd, "t".into()).unwrap();
        let sink = Arc::new(sink);
        let (done, finished) = bounded(1);
        let s = sink.clone();
        std::thread::spawn(move || {
            for _ in 0..10_000 {
                s.signal();
            }
            let _ = done.send(());
        });
        // A liveness bound, not a speed target: a blocking signal never finishes.
        assert!(finished.recv_timeout(Duration::from_secs(60)).is_ok(), "signalling blocked on the eventfd");
        // Once the VMM reads, the pending interrupt arrives.
        assert_eq!(read_counter(&vmm), u64::MAX - 1);
        let t0 = Instant::now();
        while sink.stats().delivered.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(sink); // the thread finishes a write it started
        std::thread::sleep(Duration::from_millis(200));
        // Ten thousand signals coalesced into the one pending when the VMM read (and at most
        // one more raised while that write was under way).
        let got = read_counter(&vmm);
        assert!((1..=2).contains(&got), "{got}");
    }
}
