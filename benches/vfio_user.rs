//! The vfio-user protocol loop every trapped guest access goes through when a vGPU is served to
//! QEMU (`shadowgpu serve`): a read round trip (the client waits for the reply, as QEMU's vCPU
//! does for an MMIO read), and a burst of 256 posted writes (QEMU's default for region writes:
//! no reply) closed by one read, the pattern of a guest writing a buffer through the aperture.
//! Raw protocol messages over the served socket, 4-byte accesses to a register (the aperture takes
//! the same loop plus a GGTT lookup, ~100 ns). Baseline: memcpy of the same bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowgpu::hw::{reg, Platform};
use shadowgpu::mdev::vfio_user::serve;
use shadowgpu::mdev::{GpuManager, REGION_BAR0};

const REGION_READ: u16 = 9;
const REGION_WRITE: u16 = 10;
const NO_REPLY: u32 = 1 << 4;
const BURST: usize = 256;

/// A message: header (id, command, size, flags, error) and body.
fn msg(id: u16, command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend(id.to_le_bytes());
    m.extend(command.to_le_bytes());
    m.extend((16 + body.len() as u32).to_le_bytes());
    m.extend(flags.to_le_bytes());
    m.extend(0u32.to_le_bytes());
    m.extend(body);
    m
}

/// REGION_READ/REGION_WRITE body: offset, region, count, data.
fn access(offset: u32, data: &[u8], count: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(u64::from(offset).to_le_bytes());
    b.extend(REGION_BAR0.to_le_bytes());
    b.extend(count.to_le_bytes());
    b.extend(data);
    b
}

fn read_reply(s: &mut UnixStream, buf: &mut Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    assert_eq!(u32::from_le_bytes(h[12..16].try_into().unwrap()), 0, "an error reply");
    buf.resize(size - 16, 0);
    s.read_exact(buf).unwrap();
}

fn bench(c: &mut Criterion) {
    let gpu = GpuManager::software(Platform::CoffeeLake).unwrap();
    let dir = std::env::temp_dir().join(format!("shadowgpu-bench-vu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vgpu.sock");
    let served = serve(&gpu, &path, "GVTg_V5_8", false).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    let read = msg(1, REGION_READ, 0, &access(reg::FORCEWAKE_ACK_RENDER, &[], 4));
    let mut burst = Vec::new();
    for i in 0..BURST {
        let v = (1u32 << 16 | (i as u32 & 1)).to_le_bytes();
        burst.extend(msg(2, REGION_WRITE, NO_REPLY, &access(reg::FORCEWAKE_RENDER, &v, 4)));
    }
    burst.extend(&read);
    let mut reply = Vec::new();
    let mut g = c.benchmark_group("vfio_user");
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_round_trip", |b| {
        b.iter(|| {
            s.write_all(&read).unwrap();
            read_reply(&mut s, &mut reply);
            black_box(&reply);
        })
    });
    g.bench_function("memcpy_4_bytes_baseline", |b| {
        let src = [7u8; 4];
        let mut dst = [0u8; 4];
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.throughput(Throughput::Elements(BURST as u64 + 1));
    g.bench_function("posted_writes_256_then_read", |b| {
        b.iter(|| {
            s.write_all(&burst).unwrap();
            read_reply(&mut s, &mut reply);
            black_box(&reply);
        })
    });
    g.bench_function("memcpy_1028_bytes_baseline", |b| {
        let src = vec![7u8; 4 * (BURST + 1)];
        let mut dst = vec![0u8; 4 * (BURST + 1)];
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
    drop(s);
    let _ = served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
