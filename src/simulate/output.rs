//! The table, and the SVG chart per scenario.

use std::fmt::Write as _;

use super::{PolicyResult, ScenarioResult};

fn opt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |s| format!("{s:.0}"))
}

/// One table for every scenario × policy.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        let _ = writeln!(
            out,
            "\n{} — {} ({} messages, work floor {:.0} replica-s, SLO {}s)",
            r.scenario, r.description, r.messages, r.work_floor, r.slo_s
        );
        let _ = writeln!(
            out,
            "{:<11} {:>8} {:>8} {:>8} {:>8} {:>11} {:>6} {:>7} {:>8} {:>8}  settings",
            "policy",
            "p50 s",
            "p99 s",
            "max s",
            "≤SLO %",
            "replica-s",
            "×floor",
            "changes",
            "1st up s",
            "peak q",
        );
        for p in &r.results {
            let _ = writeln!(out, "{}", row(p));
        }
    }
    out
}

/// nerite's changes of the count per scenario, each with its reason.
pub fn changes(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        for p in r.results.iter().filter(|p| !p.changes.is_empty()) {
            let _ = writeln!(
                out,
                "\n{} — {}: every change and its reason",
                r.scenario, p.policy
            );
            for c in &p.changes {
                let _ = writeln!(
                    out,
                    "{:>8.0}s  {:>4} → {:<4} {}",
                    c.t, c.from, c.to, c.reason
                );
            }
        }
    }
    out
}

fn row(p: &PolicyResult) -> String {
    format!(
        "{:<11} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>11.0} {:>6.2} {:>7} {:>8} {:>8}  {}",
        p.policy,
        p.p50_wait_s,
        p.p99_wait_s,
        p.max_wait_s,
        p.within_slo_pct,
        p.replica_seconds,
        p.cost_ratio,
        p.scale_changes,
        opt_secs(p.first_scale_up_s),
        p.max_backlog,
        p.detail
    )
}

/// The KEDA target sweep of each scenario.
pub fn sweep_table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        let _ = writeln!(out, "\n{} — KEDA target sweep", r.scenario);
        for p in &r.sweep {
            let _ = writeln!(out, "{}", row(p));
        }
    }
    out
}

const COLORS: [&str; 6] = [
    "#7f7f7f", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Arrivals, backlog and replicas over time, one line per policy, three stacked panels.
pub fn svg(r: &ScenarioResult) -> String {
    let (width, panel_h, left, top, gap) = (960.0, 200.0, 70.0, 50.0, 40.0);
    let plot_w = width - left - 170.0;
    let height = top + 3.0 * (panel_h + gap) + 10.0;
    let end = r
        .results
        .iter()
        .flat_map(|p| p.series.last().map(|x| x.t))
        .fold(1.0, f64::max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="15" font-weight="bold">{} — {}</text>"#,
        esc(&r.scenario),
        esc(&r.description)
    );
    type Get = fn(&super::engine::Point) -> f64;
    let panels: [(&str, Get, bool); 3] = [
        ("arrivals (msg/s)", |p| p.arrivals_per_s, false),
        ("backlog (messages)", |p| p.backlog as f64, true),
        ("replicas", |p| f64::from(p.replicas), true),
    ];
    for (k, (title, get, per_policy)) in panels.iter().enumerate() {
        let y0 = top + k as f64 * (panel_h + gap);
        let series: Vec<&PolicyResult> = if *per_policy {
            r.results.iter().collect()
        } else {
            r.results.iter().take(1).collect()
        };
        let ymax = series
            .iter()
            .flat_map(|p| p.series.iter().map(get))
            .fold(1.0, f64::max)
            * 1.05;
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="{}" font-weight="bold">{title}</text><rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#ccc"/>"##,
            y0 - 6.0
        );
        for i in 0..=4 {
            let v = ymax * f64::from(i) / 4.0;
            let y = y0 + panel_h - panel_h * f64::from(i) / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                left - 5.0,
                y + 4.0,
                fmt_axis(v)
            );
        }
        for i in 0..=6 {
            let t = end * f64::from(i) / 6.0;
            let x = left + plot_w * f64::from(i) / 6.0;
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                y0 + panel_h + 14.0,
                fmt_time(t)
            );
        }
        for (j, p) in series.iter().enumerate() {
            let color = if *per_policy {
                COLORS[r
                    .results
                    .iter()
                    .position(|q| std::ptr::eq(q, *p))
                    .unwrap_or(j)
                    % COLORS.len()]
            } else {
                "#444"
            };
            let mut pts = String::new();
            for pt in &p.series {
                let x = left + plot_w * pt.t / end;
                let y = y0 + panel_h - panel_h * get(pt) / ymax;
                let _ = write!(pts, "{x:.1},{y:.1} ");
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.4" points="{pts}"><title>{}</title></polyline>"#,
                esc(&p.policy)
            );
        }
    }
    for (j, p) in r.results.iter().enumerate() {
        let y = top + 10.0 + j as f64 * 18.0;
        let x = left + plot_w + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" x2="{}" y1="{y}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x + 20.0,
            COLORS[j % COLORS.len()],
            x + 26.0,
            y + 4.0,
            esc(&p.policy)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_axis(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_time(t: f64) -> String {
    let m = (t / 60.0).round() as i64;
    if m >= 120 {
        format!("{}h{:02}", m / 60, m % 60)
    } else {
        format!("{m}m")
    }
}
