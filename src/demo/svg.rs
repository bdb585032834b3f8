//! The demo's engine-occupancy timeline as a small hand-written SVG: one lane per engine, time
//! (engine time) left to right in buckets, each bucket a stacked bar of the vGPUs that used it;
//! below, one lane per vGPU rendering frames: each frame's latency (render-engine time) over the
//! run (wall time), against the display refresh period.

use std::fmt::Write;

use super::DemoReport;

const COLORS: [&str; 8] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];
const LANE: f64 = 56.0;
const LEFT: f64 = 60.0;
const WIDTH: f64 = 800.0;
const TOP: f64 = 36.0;
const LEGEND_PER_ROW: usize = 4;

/// Renders the timeline of `report`.
pub fn timeline_svg(report: &DemoReport) -> String {
    let framed: Vec<(usize, &super::VgpuReport)> =
        report.vgpus.iter().enumerate().filter(|(_, v)| !v.frames.is_empty()).collect();
    let lanes = report.engines.len() as f64;
    let frame_top = TOP + lanes * (LANE + 14.0) + 8.0;
    let legend_rows = report.vgpus.len().div_ceil(LEGEND_PER_ROW).max(1) as f64;
    let height = frame_top + framed.len() as f64 * (LANE + 30.0) + 22.0 + legend_rows * 18.0;
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
    for (lane, (i, v)) in framed.iter().enumerate() {
        frame_lane(
            &mut s,
            report,
            v,
            COLORS.get(i % COLORS.len()).copied().unwrap_or("#000"),
            frame_top + lane as f64 * (LANE + 30.0),
        );
    }
    let ly = frame_top + framed.len() as f64 * (LANE + 30.0) + 8.0;
    for (i, v) in report.vgpus.iter().enumerate() {
        let x = LEFT + (i % LEGEND_PER_ROW) as f64 * 200.0;
        let ly = ly + (i / LEGEND_PER_ROW) as f64 * 18.0;
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

/// One vGPU's frames: a dot per frame at its submission time (wall, left to right) and latency
/// (engine time, up from the lane's floor), the refresh period dashed.
fn frame_lane(s: &mut String, report: &DemoReport, v: &super::VgpuReport, color: &str, y0: f64) {
    let period_ns = report.frame_period.as_nanos() as f64;
    let worst = v.frames.iter().map(|f| f.engine_ns).max().unwrap_or(0) as f64;
    let top_ns = (period_ns * 1.25).max(worst).max(1.0);
    let wall = report.wall.as_secs_f64().max(1e-9);
    let y_of = |ns: f64| y0 + LANE - (ns / top_ns).min(1.0) * LANE;
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.1}">vGPU {} {}: frame latency, render-engine time (p99 {:.2} ms, {} of {} over {:.1} ms){}</text>"#,
        y0 - 4.0,
        v.id,
        v.ty,
        v.frame_percentile(99.0).unwrap_or(0) as f64 / 1e6,
        v.frames_late(report.frame_period),
        v.frames.len(),
        period_ns / 1e6,
        if report.preemption { "" } else { ", preemption off" }
    );
    let _ = writeln!(s, r#"<text x="8" y="{:.1}">frames</text>"#, y0 + LANE / 2.0 + 4.0);
    let _ =
        writeln!(s, r##"<rect x="{LEFT}" y="{y0:.1}" width="{WIDTH}" height="{LANE}" fill="none" stroke="#999"/>"##);
    let yp = y_of(period_ns);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{yp:.2}" x2="{:.1}" y2="{yp:.2}" stroke="#e15759" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#e15759">{:.1} ms</text>"##,
        LEFT + WIDTH,
        LEFT - 4.0,
        yp + 4.0,
        period_ns / 1e6
    );
    for f in &v.frames {
        let x = LEFT + (f.at.as_secs_f64() / wall).min(1.0) * WIDTH;
        let _ = writeln!(s, r#"<circle cx="{x:.2}" cy="{:.2}" r="1.6" fill="{color}"/>"#, y_of(f.engine_ns as f64));
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">wall time, left to right</text>"##,
        LEFT + WIDTH,
        y0 + LANE + 12.0
    );
}
