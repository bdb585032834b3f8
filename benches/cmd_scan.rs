//! Scan + shadow copy throughput of the command scanner for three command mixes, each beside a
//! memcpy of the same bytes in the same run, so the ratio holds on a noisy machine.
//!
//! `cargo bench --bench cmd_scan`; figures go to docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::{copy_from_gm, mix, scan_ring, AddrSpace};
use shadowgpu::hw::Engine;

fn bench_mix(c: &mut Criterion, name: &str, engine: Engine, batch: CmdBuf) {
    let (img, params) = mix::single_batch(engine, &batch).unwrap();
    let bytes = batch.len_bytes();
    let w = scan_ring(&img.mem, &img.xlate, &params, &mut ()).unwrap();
    assert_eq!(w.batches[0].len_bytes(), bytes);

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("scan+copy", |b| b.iter(|| scan_ring(black_box(&img.mem), &img.xlate, &params, &mut ()).unwrap()));
    let mut shadow = vec![0u8; bytes as usize];
    g.bench_function("copy-only", |b| {
        b.iter(|| copy_from_gm(&img.mem, &img.xlate, AddrSpace::Ppgtt, mix::BATCH_GMA, black_box(&mut shadow)).unwrap())
    });
    let src = batch.to_bytes();
    let mut dst = vec![0u8; src.len()];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    // Allocation included, as the scanner allocates its shadow: the fairer baseline.
    g.bench_function("memcpy+alloc", |b| b.iter(|| black_box(black_box(&src).clone())));
    g.finish();
}

fn benches(c: &mut Criterion) {
    // Each about 64 KiB: the batch-buffer size of Mesa's iris and of the media driver.
    bench_mix(c, "3d-draws", Engine::Rcs, mix::render_batch(128));
    bench_mix(c, "blitter", Engine::Bcs, mix::blit_batch(512, 0x2_0000_0000));
    bench_mix(c, "media", Engine::Vcs, mix::media_batch(128));
}

criterion_group!(cmd_scan, benches);
criterion_main!(cmd_scan);
