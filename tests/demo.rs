//! The demo's engine, short: render shares follow the weights, every escape is rejected, no
//! workload is lost, and the SVG and JSON describe the run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::time::Duration;

use shadowgpu::demo::{run, svg, DemoConfig, TIMELINE_BUCKETS};

#[test]
fn demo_engine_shares_escapes_and_no_loss() {
    let cfg = DemoConfig { duration: Duration::from_millis(2500), ..DemoConfig::default() };
    let r = run(&cfg, &|_| {}).unwrap();
    assert_eq!(r.vgpus.len(), 4);
    for v in &r.vgpus {
        assert!(v.completed > 100, "vGPU {} completed only {}", v.id, v.completed);
        assert_eq!((v.lost(), v.failed, v.cancelled), (0, 0, 0), "vGPU {}", v.id);
        assert!(
            (v.render_share - v.expected_share).abs() <= 0.02,
            "vGPU {} (weight {}): render share {:.4} vs {:.4}",
            v.id,
            v.weight,
            v.render_share,
            v.expected_share
        );
    }
    let attacker = r.vgpus.iter().find(|v| !v.escapes.is_empty()).expect("an attacker");
    assert!(attacker.escapes.len() >= 5, "{} escapes tried", attacker.escapes.len());
    assert!(attacker.escapes.iter().all(|e| e.rejected), "{:?}", attacker.escapes);
    assert_eq!(attacker.rejections.values().sum::<u64>(), attacker.escapes.len() as u64);
    assert!(r.vgpus.iter().filter(|v| v.id != attacker.id).all(|v| v.rejections.is_empty()));
    // Timeline: every render bucket used, the attacker's escapes never ran anywhere.
    let rcs = &r.engines[0];
    assert_eq!(rcs.timeline.len(), TIMELINE_BUCKETS);
    let total: u64 = rcs.timeline.iter().flatten().sum();
    assert_eq!(total, rcs.busy_ns);
    let doc = svg::timeline_svg(&r);
    assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
    assert!(doc.contains("rcs") && doc.contains("vGPU 4 batch"));
    let json = r.to_json();
    assert_eq!(json["vgpus"].as_array().unwrap().len(), 4);
    assert_eq!(json["vgpus"][3]["lost"], 0);
}
