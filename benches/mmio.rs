//! The BAR0 register path a probing guest hammers: a forcewake request followed by its ack poll,
//! an interrupt-status read, and a GTT entry write, each through the frontend (region, offset,
//! bytes) as a VMM calls it. Baseline: memcpy of the same bytes (8 for the request and the ack).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use shadowgpu::hw::bar0::GTT_OFFSET;
use shadowgpu::hw::reg;
use shadowgpu::hw::Platform;
use shadowgpu::mdev::{GpuManager, REGION_BAR0};
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn bench(c: &mut Criterion) {
    let gpu = GpuManager::software(Platform::CoffeeLake).unwrap();
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap());
    let dev = gpu.create("GVTg_V5_8", mem).unwrap();
    let mut g = c.benchmark_group("mmio");
    g.bench_function("forcewake_request_and_ack", |b| {
        let mut ack = [0u8; 4];
        let mut v = 0u32;
        b.iter(|| {
            v ^= 1;
            dev.write(REGION_BAR0, u64::from(reg::FORCEWAKE_RENDER), &(1 << 16 | v).to_le_bytes()).unwrap();
            dev.read(REGION_BAR0, u64::from(reg::FORCEWAKE_ACK_RENDER), &mut ack).unwrap();
            black_box(ack)
        })
    });
    g.bench_function("master_irq_read", |b| {
        let mut v = [0u8; 4];
        b.iter(|| {
            dev.read(REGION_BAR0, u64::from(reg::MASTER_IRQ), &mut v).unwrap();
            black_box(v)
        })
    });
    let gtt = GTT_OFFSET + dev.vgpu().params().gm.windows.aperture.base / 4096 * 8;
    g.bench_function("gtt_entry_write", |b| {
        let mut page = 0u64;
        b.iter(|| {
            page = (page + 1) % 1024;
            dev.write(REGION_BAR0, gtt, &((page << 12) | 1).to_le_bytes()).unwrap();
        })
    });
    g.bench_function("memcpy_8_bytes_baseline", |b| {
        let src = [1u8; 8];
        let mut dst = [0u8; 8];
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(dst)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
