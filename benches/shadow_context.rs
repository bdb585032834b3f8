//! Shadow-context construction (populate) plus write-back for a Gen9 render context (22 pages)
//! and a 2-page engine context, beside memcpy of the same bytes in the same run.
//!
//! `cargo bench --bench shadow_context`; figures go to docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::{mix, AddrSpace, GmRange, GmWindows, LinearTranslation, RingSpec, ScanLimits, ScanParams};
use shadowgpu::context::image::idx;
use shadowgpu::context::{context_size, read_guest_context, ShadowContext, ShadowPlan};
use shadowgpu::hw::{Engine, Gen};
use shadowgpu::mm::ShadowRoot;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const AP: GmRange = GmRange::new(0x10_0000, 0x20_0000);
const LRCA: u64 = 0x11_0000;

/// A guest context image: ring registers, an engine context that starts with a register-load
/// list of context registers, and (render) ten pages of saved 3D state followed by zero pages.
fn guest_image(engine: Engine) -> (GuestMemoryMmap<()>, LinearTranslation) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), AP.size as usize)]).unwrap();
    let mut t = LinearTranslation::new();
    t.map(AddrSpace::Ggtt, AP, GuestAddress(0));
    let state = LRCA - AP.base + 4096;
    let put = |i: usize, v: u32| mem.write_obj(v, GuestAddress(state + 4 * i as u64)).unwrap();
    put(idx::RING_START, 0x10_0000);
    put(idx::RING_CTL, 1);
    put(idx::RING_TAIL, 0x40);
    let base = engine.mmio_base();
    let mut regs: Vec<(u32, u32)> = vec![(base + 0x28, 0), (base + 0x9c, 0xffff_0000), (base + 0xc0, 0xffff_0000)];
    regs.extend((0..32).map(|g| (base + 0x600 + 4 * g, g)));
    let mut lri = CmdBuf::new();
    lri.lri(&regs);
    for (k, d) in lri.dwords.iter().enumerate() {
        put(0x50 + k, *d);
    }
    if engine == Engine::Rcs {
        let mut state3d = CmdBuf::new();
        while state3d.dwords.len() < 10 * 1024 {
            mix::draw(&mut state3d);
        }
        state3d.dwords.truncate(10 * 1024);
        // Cut at the last whole packet within ten pages (the rest reads as NOOPs).
        let mut keep = 0;
        let table = shadowgpu::cmd::CommandTable::for_gen(Gen::Gen9);
        while keep < state3d.dwords.len() {
            let (_, len) = table.decode_with_len(Engine::Rcs, state3d.dwords[keep]);
            if len == 0 || keep + len as usize > state3d.dwords.len() {
                break;
            }
            keep += len as usize;
        }
        state3d.dwords.truncate(keep);
        mem.write_slice(&state3d.to_bytes(), GuestAddress(LRCA - AP.base + 2 * 4096)).unwrap();
    }
    (mem, t)
}

fn bench_engine(c: &mut Criterion, name: &str, engine: Engine) {
    let (mem, t) = guest_image(engine);
    let windows = GmWindows { aperture: AP, hidden: GmRange::default() };
    let guest = read_guest_context(&mem, &t, &windows, engine, Gen::Gen9, LRCA).unwrap();
    let plan = ShadowPlan {
        ring_start: 0x8000_0000,
        ring_size: 0x20_0000,
        head: 0,
        tail: 0x40,
        root: ShadowRoot::L4(0x10_0000_0000),
        indirect_ctx: None,
        bb_per_ctx: None,
    };
    let scan = ScanParams {
        gen: Gen::Gen9,
        engine,
        windows,
        ring: RingSpec { start: 0, size: 4096, head: 0, tail: 0 },
        surfaces: AddrSpace::Ppgtt,
        hwsp: Some(LRCA),
        limits: ScanLimits::default(),
    };
    let mut s = ShadowContext::with_blank_clean(Gen::Gen9, engine);
    let first = s.populate(&mem, &t, &guest, &plan, &scan).unwrap();
    assert!(first.scan.is_some());
    // The bytes that move each way: the register-state page after the ring context and pages 2..N-1.
    let moved = context_size(Gen::Gen9, engine) - 4096 - 0x50 * 4;

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(2 * moved));
    g.bench_function("populate+scan+write-back", |b| {
        b.iter(|| {
            s.invalidate(); // a different context ran in between: copy and scan again
            s.populate(&mem, &t, &guest, &plan, &scan).unwrap();
            black_box(s.write_back(&mem, &t, &guest).unwrap());
        })
    });
    g.bench_function("resubmit (same context)", |b| {
        b.iter(|| {
            s.populate(&mem, &t, &guest, &plan, &scan).unwrap();
            black_box(s.write_back(&mem, &t, &guest).unwrap());
        })
    });
    let src = vec![0x5au8; moved as usize];
    let mut dst = vec![0u8; moved as usize];
    g.bench_function("memcpy in+out", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_engine(c, "gen9-rcs-22-pages", Engine::Rcs);
    bench_engine(c, "gen9-bcs-2-pages", Engine::Bcs);
}

criterion_group!(shadow_context, benches);
criterion_main!(shadow_context);
