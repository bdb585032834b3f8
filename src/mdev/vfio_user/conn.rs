//! One vfio-user connection: messages read from the client's socket, checked, handed to the
//! device, answered.
//!
//! Everything here is client input. A message announces its size before anything is allocated,
//! and nothing larger than the largest valid message (a region write of the advertised maximum
//! transfer) is read: such a client is dropped, since the stream cannot be resynchronised. A
//! command whose body is malformed, or that the device refuses, gets an error reply and the
//! connection goes on. File descriptors come only with DMA_MAP (at most one) and SET_IRQS (one per
//! vector); any other descriptor is closed on arrival.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

use zerocopy::IntoBytes;

use super::wire::{self, cmd, flags, Header, HEADER_SIZE};

/// Largest data transfer of one region access (advertised to the client).
pub const MAX_DATA_XFER: u32 = 1 << 20;
/// Descriptors the client may send with one message (advertised).
pub const MAX_MSG_FDS: usize = 1;
/// Room for descriptors in one receive: extra ones are received and closed, not left in flight.
const FD_ROOM: usize = 16;
/// Largest message accepted: a region write of [`MAX_DATA_XFER`] bytes.
pub const MAX_MESSAGE: usize = HEADER_SIZE + std::mem::size_of::<wire::RegionAccess>() + MAX_DATA_XFER as usize;

/// Why a command failed: its errno for the reply, and what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The errno the client gets.
    pub errno: i32,
    /// Why.
    pub why: String,
}

impl Refusal {
    /// A refusal with EINVAL.
    pub fn invalid(why: impl Into<String>) -> Self {
        Refusal { errno: libc::EINVAL, why: why.into() }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the framing of the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The device asked to end the connection.
    #[error("{0}")]
    Device(String),
}

/// What a connection serves.
pub trait Device {
    /// Regions and interrupt indexes.
    fn counts(&self) -> (u32, u32);
    /// Region `index`, if it exists.
    fn region_info(&self, index: u32) -> Option<wire::RegionInfo>;
    /// Interrupt index `index`, if it exists.
    fn irq_info(&self, index: u32) -> Option<wire::IrqInfo>;
    /// Checked before every message: an error ends the connection.
    fn healthy(&mut self) -> Result<(), String>;
    /// A region read.
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Refusal>;
    /// A region write.
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Refusal>;
    /// A DMA map, with the file it comes from, if any.
    fn dma_map(&mut self, map: &wire::DmaMap, file: Option<File>) -> Result<(), Refusal>;
    /// A DMA unmap.
    fn dma_unmap(&mut self, unmap: &wire::DmaUnmap) -> Result<(), Refusal>;
    /// SET_IRQS with its eventfds.
    fn set_irqs(&mut self, set: &wire::SetIrqs, fds: Vec<File>) -> Result<(), Refusal>;
    /// A device reset.
    fn reset(&mut self) -> Result<(), Refusal>;
}

/// The server's capabilities, as the protocol's VERSION reply carries them.
fn capabilities() -> String {
    format!(
        "{{\"capabilities\":{{\"max_msg_fds\":{MAX_MSG_FDS},\"max_data_xfer_size\":{MAX_DATA_XFER},\
         \"migration\":{{\"pgsize\":4096}}}}}}"
    )
}

/// Receives up to `buf.len()` bytes and the descriptors that come with them.
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<File>) -> std::io::Result<usize> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((FD_ROOM * std::mem::size_of::<libc::c_int>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a zeroed msghdr is valid; the pointers set below stay valid for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: recvmsg on a socket this stream owns, into buffers that outlive the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: walks the control messages the kernel wrote into `control`, as CMSG_* define; each
    // SCM_RIGHTS descriptor is new to this process and becomes owned by a File at once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for k in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(data.add(k));
                    if fd >= 0 {
                        fds.push(File::from_raw_fd(fd));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n as usize)
}

/// Serves one client on `stream` until it disconnects, breaks the protocol or the device ends
/// the connection. `Ok` when the client closed the socket.
pub fn serve_connection(stream: &mut UnixStream, dev: &mut dyn Device) -> Result<(), ConnError> {
    let mut body = Vec::new();
    loop {
        let mut header = Header::default();
        let mut fds = Vec::new();
        let got = recv_with_fds(stream, header.as_mut_bytes(), &mut fds)?;
        if got == 0 {
            return Ok(());
        }
        if got < HEADER_SIZE {
            let rest = header.as_mut_bytes().get_mut(got..).unwrap_or_default();
            stream.read_exact(rest)?;
        }
        let size = header.message_size as usize;
        if !(HEADER_SIZE..=MAX_MESSAGE).contains(&size) {
            return Err(ConnError::Protocol(format!("message of {size} bytes (command {})", header.command)));
        }
        if header.flags & flags::TYPE_MASK != 0 {
            return Err(ConnError::Protocol(format!("a message of type {} from the client", header.flags & 0xf)));
        }
        body.resize(size - HEADER_SIZE, 0);
        stream.read_exact(&mut body)?;
        dev.healthy().map_err(ConnError::Device)?;
        let reply = dispatch(dev, &header, &body, fds);
        if header.flags & flags::NO_REPLY != 0 {
            continue;
        }
        let reply = match reply {
            Ok(payload) => {
                let mut h = Header { flags: flags::REPLY, error: 0, ..header };
                h.message_size = u32::try_from(HEADER_SIZE + payload.len())
                    .map_err(|_| ConnError::Protocol("reply too large".into()))?;
                let mut out = h.as_bytes().to_vec();
                out.extend_from_slice(&payload);
                out
            }
            Err(r) => {
                let errno = u32::try_from(r.errno).unwrap_or(libc::EINVAL as u32);
                let h = Header {
                    message_size: HEADER_SIZE as u32,
                    flags: flags::REPLY | flags::ERROR,
                    error: errno,
                    ..header
                };
                h.as_bytes().to_vec()
            }
        };
        stream.write_all(&reply)?;
    }
}

/// Runs one command; returns the reply's body.
fn dispatch(dev: &mut dyn Device, h: &Header, body: &[u8], mut fds: Vec<File>) -> Result<Vec<u8>, Refusal> {
    let short = || Refusal::invalid(format!("command {}: body of {} bytes is too short", h.command, body.len()));
    let takes_fds = matches!(h.command, cmd::DMA_MAP | cmd::SET_IRQS);
    if !takes_fds && !fds.is_empty() {
        return Err(Refusal::invalid(format!("command {} carries no file descriptors", h.command)));
    }
    match h.command {
        cmd::VERSION => {
            wire::parse::<wire::Version>(body).ok_or_else(short)?;
            // The client's capabilities: a NUL-terminated string, if any. The server's do not
            // depend on them.
            let caps = body.get(std::mem::size_of::<wire::Version>()..).unwrap_or_default();
            if let Some((0, text)) = caps.split_last().map(|(l, t)| (*l, t)) {
                if text.contains(&0) || std::str::from_utf8(text).is_err() {
                    return Err(Refusal::invalid("VERSION capabilities are not one UTF-8 string"));
                }
            } else if !caps.is_empty() {
                return Err(Refusal::invalid("VERSION capabilities are not NUL-terminated"));
            }
            let mut out = wire::Version { major: 0, minor: 0 }.as_bytes().to_vec();
            out.extend_from_slice(capabilities().as_bytes());
            out.push(0);
            Ok(out)
        }
        cmd::DMA_MAP => {
            let map = wire::parse::<wire::DmaMap>(body).ok_or_else(short)?;
            if fds.len() > 1 {
                return Err(Refusal::invalid("DMA_MAP with more than one file descriptor"));
            }
            dev.dma_map(&map, fds.pop())?;
            Ok(Vec::new())
        }
        cmd::DMA_UNMAP => {
            let unmap = wire::parse::<wire::DmaUnmap>(body).ok_or_else(short)?;
            dev.dma_unmap(&unmap)?;
            Ok(unmap.as_bytes().to_vec())
        }
        cmd::DEVICE_GET_INFO => {
            wire::parse::<wire::DeviceInfo>(body).ok_or_else(short)?;
            let (num_regions, num_irqs) = dev.counts();
            let info = wire::DeviceInfo {
                argsz: std::mem::size_of::<wire::DeviceInfo>() as u32,
                flags: wire::DEVICE_FLAGS_PCI | wire::DEVICE_FLAGS_RESET,
                num_regions,
                num_irqs,
            };
            Ok(info.as_bytes().to_vec())
        }
        cmd::DEVICE_GET_REGION_INFO => {
            let q = wire::parse::<wire::RegionInfo>(body).ok_or_else(short)?;
            let info = dev.region_info(q.index).ok_or_else(|| Refusal::invalid(format!("no region {}", q.index)))?;
            Ok(info.as_bytes().to_vec())
        }
        cmd::GET_IRQ_INFO => {
            let q = wire::parse::<wire::IrqInfo>(body).ok_or_else(short)?;
            let info = dev.irq_info(q.index).ok_or_else(|| Refusal::invalid(format!("no interrupt {}", q.index)))?;
            Ok(info.as_bytes().to_vec())
        }
        cmd::SET_IRQS => {
            let set = wire::parse::<wire::SetIrqs>(body).ok_or_else(short)?;
            if set.flags & wire::IRQ_SET_DATA_EVENTFD != 0 && fds.len() != set.count as usize {
                return Err(Refusal::invalid(format!("SET_IRQS of {} vectors with {} eventfds", set.count, fds.len())));
            }
            if set.flags & wire::IRQ_SET_DATA_EVENTFD == 0 && !fds.is_empty() {
                return Err(Refusal::invalid("SET_IRQS without eventfd data carries file descriptors"));
            }
            dev.set_irqs(&set, fds)?;
            Ok(Vec::new())
        }
        cmd::REGION_READ => {
            let a = wire::parse::<wire::RegionAccess>(body).ok_or_else(short)?;
            if a.count > MAX_DATA_XFER {
                return Err(Refusal::invalid(format!("a read of {} bytes exceeds {MAX_DATA_XFER}", a.count)));
            }
            let mut out = a.as_bytes().to_vec();
            let at = out.len();
            out.resize(at + a.count as usize, 0);
            dev.region_read(a.region, a.offset, out.get_mut(at..).unwrap_or_default())?;
            Ok(out)
        }
        cmd::REGION_WRITE => {
            let a = wire::parse::<wire::RegionAccess>(body).ok_or_else(short)?;
            let data = body.get(std::mem::size_of::<wire::RegionAccess>()..).unwrap_or_default();
            if data.len() != a.count as usize {
                return Err(Refusal::invalid(format!("a write of {} bytes carries {}", a.count, data.len())));
            }
            dev.region_write(a.region, a.offset, data)?;
            Ok(a.as_bytes().to_vec())
        }
        cmd::DEVICE_RESET => {
            dev.reset()?;
            Ok(Vec::new())
        }
        other => Err(Refusal { errno: libc::ENOSYS, why: format!("command {other} is not supported") }),
    }
}
