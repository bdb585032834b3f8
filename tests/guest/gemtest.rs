//! The real-guest test's guest program: drives i915 through its GEM uAPI on a vGPU.
//!
//! Built static by tests/guest/assets.sh (`rustc -C target-feature=+crt-static`, std only) and run by the
//! initramfs's init as `gemtest /dev/dri/renderD128`. Every result is a line starting with `gemtest:`; the
//! last line is `gemtest: PASS` or `gemtest: FAIL <why>`, and the exit status says the same.
//!
//! Steps: MI_STORE_DWORD_IMM on every engine i915 exposes, read back with pread; a linear 32 bpp
//! XY_SRC_COPY_BLT on the blitter, compared; 1,000 nop batches on the render engine and their rate; a batch
//! that jumps to itself forever on its own context, which i915 must find hung and reset (the reset stats
//! name the context guilty), followed by a store on the same engine that must still work.
//!
//! The uAPI numbers and layouts are those of Linux's include/uapi/drm/i915_drm.h and drm.h.

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

extern "C" {
    fn ioctl(fd: i32, request: u64, ...) -> i32;
}

const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | ((b'd' as u64) << 8) | nr
}
const fn iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | ((b'd' as u64) << 8) | nr
}

const DRM_COMMAND_BASE: u64 = 0x40;
const IOCTL_GEM_CLOSE: u64 = iow(0x09, 8);
const IOCTL_GETPARAM: u64 = iowr(DRM_COMMAND_BASE + 0x06, 16);
const IOCTL_GEM_CREATE: u64 = iowr(DRM_COMMAND_BASE + 0x1b, 16);
const IOCTL_GEM_PREAD: u64 = iow(DRM_COMMAND_BASE + 0x1c, 32);
const IOCTL_GEM_PWRITE: u64 = iow(DRM_COMMAND_BASE + 0x1d, 32);
const IOCTL_EXECBUFFER2: u64 = iow(DRM_COMMAND_BASE + 0x29, 64);
const IOCTL_GEM_WAIT: u64 = iowr(DRM_COMMAND_BASE + 0x2c, 16);
const IOCTL_CONTEXT_CREATE: u64 = iowr(DRM_COMMAND_BASE + 0x2d, 8);
const IOCTL_GET_RESET_STATS: u64 = iowr(DRM_COMMAND_BASE + 0x32, 24);

const PARAM_CHIPSET_ID: i32 = 4;
const PARAM_HAS_BSD: i32 = 5;
const PARAM_HAS_BLT: i32 = 11;
const PARAM_HAS_VEBOX: i32 = 22;
const PARAM_HAS_BSD2: i32 = 31;
const PARAM_HAS_EXEC_SOFTPIN: i32 = 37;

const EXEC_RENDER: u64 = 1;
const EXEC_BSD: u64 = 2;
const EXEC_BLT: u64 = 3;
const EXEC_VEBOX: u64 = 4;
const EXEC_BSD_RING1: u64 = 1 << 13;
const EXEC_BSD_RING2: u64 = 2 << 13;
const EXEC_NO_RELOC: u64 = 1 << 11;
const EXEC_HANDLE_LUT: u64 = 1 << 12;

const OBJECT_WRITE: u64 = 1 << 2;
const OBJECT_48B: u64 = 1 << 3;
const OBJECT_PINNED: u64 = 1 << 4;

const MI_NOOP: u32 = 0;
const MI_BATCH_BUFFER_END: u32 = 0x0500_0000;
const MI_STORE_DWORD_IMM: u32 = 0x1000_0002;
const MI_BATCH_BUFFER_START_PPGTT: u32 = 0x1880_0101;
const XY_SRC_COPY_BLT_32BPP: u32 = (2 << 29) | (0x53 << 22) | (3 << 20) | 8;

/// Fixed PPGTT addresses (softpin): far apart, 2 MiB aligned.
const VA_TARGET: u64 = 0x0100_0000;
const VA_BATCH: u64 = 0x0200_0000;
const VA_SRC: u64 = 0x0300_0000;
const VA_DST: u64 = 0x0400_0000;
const VA_SPIN: u64 = 0x0500_0000;

#[repr(C)]
#[derive(Default)]
struct GetParam {
    param: i32,
    _pad: i32,
    value: u64,
}

#[repr(C)]
#[derive(Default)]
struct GemCreate {
    size: u64,
    handle: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GemRw {
    handle: u32,
    _pad: u32,
    offset: u64,
    size: u64,
    data_ptr: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ExecObject2 {
    handle: u32,
    relocation_count: u32,
    relocs_ptr: u64,
    alignment: u64,
    offset: u64,
    flags: u64,
    rsvd1: u64,
    rsvd2: u64,
}

#[repr(C)]
#[derive(Default)]
struct Execbuffer2 {
    buffers_ptr: u64,
    buffer_count: u32,
    batch_start_offset: u32,
    batch_len: u32,
    dr1: u32,
    dr4: u32,
    num_cliprects: u32,
    cliprects_ptr: u64,
    flags: u64,
    rsvd1: u64,
    rsvd2: u64,
}

#[repr(C)]
#[derive(Default)]
struct GemWait {
    handle: u32,
    flags: u32,
    timeout_ns: i64,
}

#[repr(C)]
#[derive(Default)]
struct ContextCreate {
    ctx_id: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct ResetStats {
    ctx_id: u32,
    flags: u32,
    reset_count: u32,
    batch_active: u32,
    batch_pending: u32,
    _pad: u32,
}

struct Drm {
    fd: i32,
}

type Res<T> = Result<T, String>;

impl Drm {
    fn call<T>(&self, what: &str, request: u64, arg: &mut T) -> Res<()> {
        loop {
            // SAFETY: `arg` is a live, exclusively borrowed struct of the size encoded in `request`.
            let r = unsafe { ioctl(self.fd, request, arg as *mut T as *mut c_void) };
            if r == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("{what}: {err}"));
            }
        }
    }

    fn param(&self, param: i32) -> Res<i32> {
        let mut value: i32 = 0;
        let mut p = GetParam { param, _pad: 0, value: &mut value as *mut i32 as u64 };
        self.call("GETPARAM", IOCTL_GETPARAM, &mut p)?;
        Ok(value)
    }

    fn create(&self, size: u64) -> Res<u32> {
        let mut c = GemCreate { size, ..Default::default() };
        self.call("GEM_CREATE", IOCTL_GEM_CREATE, &mut c)?;
        Ok(c.handle)
    }

    fn close(&self, handle: u32) {
        let mut c = [handle, 0u32];
        let _ = self.call("GEM_CLOSE", IOCTL_GEM_CLOSE, &mut c);
    }

    fn write(&self, handle: u32, offset: u64, data: &[u32]) -> Res<()> {
        let mut rw = GemRw {
            handle,
            offset,
            size: (data.len() * 4) as u64,
            data_ptr: data.as_ptr() as u64,
            ..Default::default()
        };
        self.call("GEM_PWRITE", IOCTL_GEM_PWRITE, &mut rw)
    }

    fn read(&self, handle: u32, offset: u64, dwords: usize) -> Res<Vec<u32>> {
        let mut out = vec![0u32; dwords];
        let mut rw = GemRw {
            handle,
            offset,
            size: (dwords * 4) as u64,
            data_ptr: out.as_mut_ptr() as u64,
            ..Default::default()
        };
        self.call("GEM_PREAD", IOCTL_GEM_PREAD, &mut rw)?;
        Ok(out)
    }

    /// Submits `objects` (the batch last) with softpinned offsets.
    fn exec(&self, objects: &[(u32, u64, bool)], batch_len: u32, ring: u64, ctx: u32) -> Res<()> {
        let objs: Vec<ExecObject2> = objects
            .iter()
            .map(|&(handle, offset, write)| ExecObject2 {
                handle,
                offset,
                flags: OBJECT_PINNED | OBJECT_48B | if write { OBJECT_WRITE } else { 0 },
                ..Default::default()
            })
            .collect();
        let mut eb = Execbuffer2 {
            buffers_ptr: objs.as_ptr() as u64,
            buffer_count: objs.len() as u32,
            batch_len,
            flags: ring | EXEC_NO_RELOC | EXEC_HANDLE_LUT,
            rsvd1: u64::from(ctx),
            ..Default::default()
        };
        self.call("EXECBUFFER2", IOCTL_EXECBUFFER2, &mut eb)
    }

    /// Waits for every fence on `handle`; false on timeout.
    fn wait(&self, handle: u32, timeout: Duration) -> Res<bool> {
        let mut w = GemWait { handle, flags: 0, timeout_ns: timeout.as_nanos() as i64 };
        match self.call("GEM_WAIT", IOCTL_GEM_WAIT, &mut w) {
            Ok(()) => Ok(true),
            Err(e) if e.contains("timed out") || e.contains("Timer expired") => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn context(&self) -> Res<u32> {
        let mut c = ContextCreate::default();
        self.call("CONTEXT_CREATE", IOCTL_CONTEXT_CREATE, &mut c)?;
        Ok(c.ctx_id)
    }

    fn reset_stats(&self, ctx: u32) -> Res<ResetStats> {
        let mut s = ResetStats { ctx_id: ctx, ..Default::default() };
        self.call("GET_RESET_STATS", IOCTL_GET_RESET_STATS, &mut s)?;
        Ok(s)
    }
}

fn store_dword(drm: &Drm, ring: u64, name: &str, value: u32, ctx: u32) -> Res<()> {
    let target = drm.create(4096)?;
    let batch = drm.create(4096)?;
    drm.write(target, 0, &[0xdead_beef])?;
    let cmds = [
        MI_STORE_DWORD_IMM,
        VA_TARGET as u32 + 64,
        (VA_TARGET >> 32) as u32,
        value,
        MI_BATCH_BUFFER_END,
        MI_NOOP,
    ];
    drm.write(batch, 0, &cmds)?;
    drm.exec(&[(target, VA_TARGET, true), (batch, VA_BATCH, false)], 24, ring, ctx)?;
    if !drm.wait(batch, Duration::from_secs(30))? {
        return Err(format!("store on {name}: not done after 30 s"));
    }
    let got = drm.read(target, 64, 1)?;
    drm.close(target);
    drm.close(batch);
    match got.first() {
        Some(&v) if v == value => {
            println!("gemtest: store {name} ok {value:#010x}");
            Ok(())
        }
        other => Err(format!("store on {name}: read {other:x?}, wrote {value:#x}")),
    }
}

fn blit(drm: &Drm) -> Res<()> {
    const W: u32 = 256; // pixels
    const H: u32 = 64;
    let pitch = W * 4;
    let size = u64::from(pitch * H);
    let src = drm.create(size)?;
    let dst = drm.create(size)?;
    let batch = drm.create(4096)?;
    let pattern: Vec<u32> = (0..W * H).map(|i| i.wrapping_mul(0x9e37_79b9) ^ 0x5a5a_0000).collect();
    drm.write(src, 0, &pattern)?;
    drm.write(dst, 0, &vec![0u32; (W * H) as usize])?;
    let cmds = [
        XY_SRC_COPY_BLT_32BPP,
        (3 << 24) | (0xcc << 16) | pitch,
        0,
        (H << 16) | W,
        VA_DST as u32,
        (VA_DST >> 32) as u32,
        0,
        pitch,
        VA_SRC as u32,
        (VA_SRC >> 32) as u32,
        MI_BATCH_BUFFER_END,
        MI_NOOP,
    ];
    drm.write(batch, 0, &cmds)?;
    drm.exec(&[(src, VA_SRC, false), (dst, VA_DST, true), (batch, VA_BATCH, false)], 48, EXEC_BLT, 0)?;
    if !drm.wait(batch, Duration::from_secs(30))? {
        return Err("blit: not done after 30 s".into());
    }
    let got = drm.read(dst, 0, (W * H) as usize)?;
    let bad = got.iter().zip(&pattern).filter(|(a, b)| a != b).count();
    drm.close(src);
    drm.close(dst);
    drm.close(batch);
    if bad != 0 {
        return Err(format!("blit: {bad} of {} pixels differ", W * H));
    }
    println!("gemtest: blit bcs ok {} bytes", size);
    Ok(())
}

fn nops(drm: &Drm, count: u32) -> Res<()> {
    let batch = drm.create(4096)?;
    drm.write(batch, 0, &[MI_BATCH_BUFFER_END, MI_NOOP])?;
    let start = Instant::now();
    for _ in 0..count {
        drm.exec(&[(batch, VA_BATCH, false)], 8, EXEC_RENDER, 0)?;
    }
    if !drm.wait(batch, Duration::from_secs(120))? {
        return Err(format!("nops: {count} nop batches not done after 120 s"));
    }
    let secs = start.elapsed().as_secs_f64();
    drm.close(batch);
    println!("gemtest: nops {count} in {:.3} s = {:.0} batches/s", secs, f64::from(count) / secs);
    Ok(())
}

fn hang(drm: &Drm) -> Res<()> {
    let ctx = drm.context()?;
    let spin = drm.create(4096)?;
    drm.write(spin, 0, &[MI_NOOP, MI_BATCH_BUFFER_START_PPGTT, VA_SPIN as u32, (VA_SPIN >> 32) as u32])?;
    let start = Instant::now();
    drm.exec(&[(spin, VA_SPIN, false)], 16, EXEC_RENDER, ctx)?;
    println!("gemtest: hang submitted a self-looping batch on rcs (context {ctx})");
    if !drm.wait(spin, Duration::from_secs(150))? {
        return Err("hang: the endless batch was not reset within 150 s".into());
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = drm.reset_stats(ctx)?;
    println!(
        "gemtest: hang reset after {secs:.1} s: reset_count {} batch_active {} batch_pending {}",
        stats.reset_count, stats.batch_active, stats.batch_pending
    );
    if stats.batch_active == 0 {
        return Err("hang: the context was not found guilty of a hang".into());
    }
    drm.close(spin);
    store_dword(drm, EXEC_RENDER, "rcs-after-reset", 0x600d_0001, 0)
}

fn run(path: &str) -> Res<()> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("open {path}: {e}"))?;
    let drm = Drm { fd: file.as_raw_fd() };
    println!("gemtest: device {path} chipset {:#06x}", drm.param(PARAM_CHIPSET_ID)?);
    if drm.param(PARAM_HAS_EXEC_SOFTPIN)? == 0 {
        return Err("no softpin (full PPGTT) on this device".into());
    }
    let mut engines = vec![(EXEC_RENDER, "rcs")];
    if drm.param(PARAM_HAS_BLT)? != 0 {
        engines.push((EXEC_BLT, "bcs"));
    }
    if drm.param(PARAM_HAS_BSD)? != 0 {
        if drm.param(PARAM_HAS_BSD2)? != 0 {
            engines.push((EXEC_BSD | EXEC_BSD_RING1, "vcs0"));
            engines.push((EXEC_BSD | EXEC_BSD_RING2, "vcs1"));
        } else {
            engines.push((EXEC_BSD, "vcs0"));
        }
    }
    if drm.param(PARAM_HAS_VEBOX)? != 0 {
        engines.push((EXEC_VEBOX, "vecs"));
    }
    for (i, (ring, name)) in engines.iter().enumerate() {
        store_dword(&drm, *ring, name, 0xc0de_0000 + i as u32, 0)?;
    }
    blit(&drm)?;
    nops(&drm, 1000)?;
    hang(&drm)?;
    Ok(())
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/dev/dri/renderD128".into());
    match run(&path) {
        Ok(()) => println!("gemtest: PASS"),
        Err(e) => {
            println!("gemtest: FAIL {e}");
            std::process::exit(1);
        }
    }
}
