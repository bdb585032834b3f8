//! The demo's engine-occupancy timeline as a small hand-written SVG: one lane per engine, time
//! (engine time) left to right in buckets, each bucket a stacked bar of the vGPUs that used it.

use std::fmt::Write;

use super::DemoReport;

const COLORS: [&str; 8] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];
const LANE: f64 = 56.0;
const LEFT: f64 = 60.0;
const WIDTH: f64 = 800.0;
const TOP: f64 = 36.0;

/// Renders the timeline of `report`.
pub fn timeline_svg(report: &DemoReport) -> String {
    let lanes = report.engines.len() as f64;
    let height = TOP + lanes * (LANE + 14.0) + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif" font-size="12">"#,
        w = LEFT + WIDTH + 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">shadowgpu demo: engine occupancy per vGPU ({}, {:.1} s, engine time left to right)</text>"#,
        report.platform,
        report.wall.as_secs_f64()
    );
    for (lane, e) in report.engines.iter().enumerate() {
        let y0 = TOP + lane as f64 * (LANE + 14.0);
        let _ = writeln!(s, r#"<text x="8" y="{:.1}">{}</text>"#, y0 + LANE / 2.0 + 4.0, e.engine.name());
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0:.1}" width="{WIDTH}" height="{LANE}" fill="none" stroke="#999"/>"##
        );
        let n = e.timeline.len().max(1) as f64;
        let bw = WIDTH / n;
        let full = e.timeline.iter().map(|b| b.iter().sum::<u64>()).max().unwrap_or(0).max(1) as f64;
        for (i, bucket) in e.timeline.iter().enumerate() {
            let mut y = y0 + LANE;
            for (v, &ns) in bucket.iter().enumerate() {
                if ns == 0 {
                    continue;
                }
                let h = ns as f64 / full * LANE;
                y -= h;
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.2}" y="{y:.2}" width="{:.2}" height="{h:.2}" fill="{}"/>"#,
                    LEFT + i as f64 * bw,
                    bw + 0.05,
                    COLORS.get(v % COLORS.len()).copied().unwrap_or("#000")
                );
            }
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{:.1} ms busy</text>"##,
            LEFT + WIDTH,
            y0 + LANE + 12.0,
            e.busy_ns as f64 / 1e6
        );
    }
    let ly = TOP + lanes * (LANE + 14.0) + 16.0;
    for (i, v) in report.vgpus.iter().enumerate() {
        let x = LEFT + i as f64 * 190.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly:.1}">vGPU {} {} (w{})</text>"#,
            ly - 10.0,
            COLORS.get(i % COLORS.len()).copied().unwrap_or("#000"),
            x + 16.0,
            v.id,
            v.ty,
            v.weight
        );
    }
    s.push_str("</svg>\n");
    s
}
