//! Shadow PPGTT: shadowing a 4-level table set that maps 256 MiB in 4 KiB pages, and bringing
//! the shadow up to date after the guest changes one page-table page, with a write-protecting
//! tracker (one table re-read) and with the re-validation fallback (every table re-read). Each
//! beside memcpy of the guest table bytes the operation reads.
//!
//! `cargo bench --bench ppgtt`; figures go to docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shadowgpu::mm::ppgtt::{PageTracker, PpgttLimits, PpgttRoot, Revalidate, ShadowMemory, ShadowPpgtt};
use shadowgpu::mm::DmaMapper;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MAPPED: u64 = 256 << 20;
const TABLES: u64 = MAPPED; // guest tables live right after the mapped pages
const PML4: u64 = TABLES;
const PDP: u64 = TABLES + 0x1000;
const PD: u64 = TABLES + 0x2000;
const PT0: u64 = TABLES + 0x3000;
const PTS: u64 = MAPPED >> 21; // 128 page tables
const HOST: u64 = 1 << 40;

/// A lean host: tables in an arena, guest pages "mapped" at a fixed offset (an identity IOMMU).
#[derive(Default)]
struct Arena {
    tables: Vec<Box<[u64; 512]>>,
    free: Vec<usize>,
}

impl ShadowMemory for Arena {
    fn alloc_table(&mut self) -> Result<u64, String> {
        let i = match self.free.pop() {
            Some(i) => {
                self.tables[i].fill(0);
                i
            }
            None => {
                self.tables.push(Box::new([0; 512]));
                self.tables.len() - 1
            }
        };
        Ok((1 << 44) + 4096 * i as u64)
    }
    fn free_table(&mut self, table: u64) {
        self.free.push(((table - (1 << 44)) / 4096) as usize);
    }
    fn write_entries(&mut self, table: u64, first: usize, entries: &[u64]) {
        let t = &mut self.tables[((table - (1 << 44)) / 4096) as usize];
        t[first..first + entries.len()].copy_from_slice(entries);
    }
}

impl DmaMapper for Arena {
    fn map_page(&mut self, gpa: GuestAddress) -> Result<u64, String> {
        Ok(gpa.0 + HOST)
    }
    fn unmap_page(&mut self, _host: u64) {}
}

/// Tracks every page (as a write-protecting VMM would).
struct TrackAll;

impl PageTracker for TrackAll {
    fn track(&mut self, _gpa: GuestAddress) -> bool {
        true
    }
    fn untrack(&mut self, _gpa: GuestAddress) {}
}

fn guest() -> GuestMemoryMmap<()> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (MAPPED + (4 + PTS) * 4096) as usize)]).unwrap();
    mem.write_obj(PDP | 3, GuestAddress(PML4)).unwrap();
    mem.write_obj(PD | 3, GuestAddress(PDP)).unwrap();
    for t in 0..PTS {
        let pt = PT0 + t * 4096;
        mem.write_obj(pt | 3, GuestAddress(PD + 8 * t)).unwrap();
        let entries: Vec<u8> = (0..512u64).flat_map(|i| (((t * 512 + i) << 12) | 3).to_le_bytes()).collect();
        mem.write_slice(&entries, GuestAddress(pt)).unwrap();
    }
    mem
}

fn benches(c: &mut Criterion) {
    let mem = guest();
    let root = PpgttRoot::L4(PML4);
    let table_bytes = (3 + PTS) * 4096;
    let limits = PpgttLimits::default();

    let mut g = c.benchmark_group("ppgtt-256MiB");
    g.throughput(Throughput::Bytes(table_bytes));
    g.bench_function("shadow", |b| {
        b.iter_batched(
            || {
                let mut host = Arena::default();
                let cache = ShadowPpgtt::new(&mut host, limits, Box::new(Revalidate)).unwrap();
                (host, cache)
            },
            |(mut host, mut cache)| {
                black_box(cache.pin(&mem, &mut host, root).unwrap());
                (host, cache)
            },
            BatchSize::LargeInput,
        )
    });
    let src = vec![0x5au8; table_bytes as usize];
    let mut dst = vec![0u8; table_bytes as usize];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    // Fallback: the next pin re-reads every table and re-shadows the changed entry.
    let mut host = Arena::default();
    let mut cache = ShadowPpgtt::new(&mut host, limits, Box::new(Revalidate)).unwrap();
    cache.pin(&mem, &mut host, root).unwrap();
    cache.unpin(&mut host, root).unwrap();
    let mut flip = 0u64;
    let pt = PT0 + 77 * 4096;
    g.bench_function("one PT page changed, re-validate all", |b| {
        b.iter(|| {
            flip ^= 1;
            mem.write_obj(((5 + flip) << 12) | 3, GuestAddress(pt + 8 * 9)).unwrap();
            black_box(cache.pin(&mem, &mut host, root).unwrap());
            cache.unpin(&mut host, root).unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ppgtt-one-table");
    g.throughput(Throughput::Bytes(4096));
    let mut host = Arena::default();
    let mut cache = ShadowPpgtt::new(&mut host, limits, Box::new(TrackAll)).unwrap();
    cache.pin(&mem, &mut host, root).unwrap();
    cache.unpin(&mut host, root).unwrap();
    g.bench_function("one PT page changed, tracked", |b| {
        b.iter(|| {
            flip ^= 1;
            mem.write_obj(((5 + flip) << 12) | 3, GuestAddress(pt + 8 * 9)).unwrap();
            cache.page_written(GuestAddress(pt + 8 * 9));
            black_box(cache.pin(&mem, &mut host, root).unwrap());
            cache.unpin(&mut host, root).unwrap();
        })
    });
    let src = vec![0x5au8; 4096];
    let mut dst = vec![0u8; 4096];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    g.finish();
}

criterion_group!(ppgtt, benches);
criterion_main!(ppgtt);
