//! Replays every fuzz corpus under `fuzz/corpus/` through the same entry points the fuzz targets
//! use, so the corpora are regression tests under plain `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

type Target = fn(&[u8]) -> Result<bool, String>;

fn targets() -> Vec<(&'static str, Target)> {
    vec![
        ("scan", shadowgpu::cmd::fuzzing::scan_bytes),
        ("elsp", shadowgpu::execlist::fuzzing::elsp_bytes),
        ("ggtt", shadowgpu::mm::fuzzing::ggtt_bytes),
        ("ppgtt", shadowgpu::mm::fuzzing::ppgtt_bytes),
        ("device", shadowgpu::vgpu::fuzzing::device_bytes),
        ("context", shadowgpu::context::fuzzing::image_bytes),
        #[cfg(feature = "vfio-user")]
        ("vfio_user", shadowgpu::mdev::vfio_user::fuzzing::messages_bytes),
    ]
}

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name)
}

#[test]
fn corpora_replay_without_violations() {
    for (name, target) in targets() {
        let dir = corpus(name);
        let mut n = 0;
        let mut accepted = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            match target(&data) {
                Ok(ok) => accepted += usize::from(ok),
                Err(v) => panic!("{}: {v}", path.display()),
            }
            n += 1;
        }
        assert!(n >= 5, "corpus {name} has only {n} inputs");
        assert!(accepted >= 5, "corpus {name}: only {accepted} of {n} inputs are accepted streams");
    }
}

/// Writes the seed inputs into the corpus: `cargo test --test fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let (ggtt, ppgtt) = shadowgpu::mm::fuzzing::seeds();
    let sets = [
        ("scan", shadowgpu::cmd::fuzzing::seeds()),
        ("elsp", shadowgpu::execlist::fuzzing::seeds()),
        ("ggtt", ggtt),
        ("ppgtt", ppgtt),
        ("device", shadowgpu::vgpu::fuzzing::seeds()),
        ("context", shadowgpu::context::fuzzing::seeds()),
        #[cfg(feature = "vfio-user")]
        ("vfio_user", shadowgpu::mdev::vfio_user::fuzzing::seeds()),
    ];
    for (name, seeds) in sets {
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(corpus(name).join(format!("seed-{i}")), s).unwrap();
        }
    }
}
