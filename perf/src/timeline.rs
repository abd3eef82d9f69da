//! `--timeline FILE`: IOPS and latency percentiles per interval over the run, with the shard
//! moves that happened meanwhile (from `shard_migrate` or the balancer through `-r`), as JSON;
//! `--timeline-plot FILE` draws it as SVG (IOPS above, p50/p99/p99.9 below, moves marked).
//!
//! Each job keeps a [`Recorder`]: one histogram for the current interval, handed to the main
//! thread through a channel when the interval ends (checked on each completion, so an
//! interval with no completion ends with the next one). The main thread watches the volumes'
//! routing tables ([`Watcher`]) and merges the jobs' slices interval by interval.

use crate::report::{svg_start, xml_escape};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::mpsc::Sender;
use tidepool::pool::PoolService;
use tidepool::time::Nanos;

/// One job's interval.
pub struct Slice {
    pub index: u64,
    pub end_ns: Nanos,
    pub ios: u64,
    pub errors: u64,
    pub latency_ns: Histogram<u64>,
}

fn interval_histogram() -> Histogram<u64> {
    // The jobs' own kind (two digits, up to an hour): small enough to send ten times a second.
    crate::report::latency_histogram()
}

/// The job side.
pub struct Recorder {
    tx: Sender<Slice>,
    interval_ns: Nanos,
    next_end: Nanos,
    index: u64,
    ios: u64,
    errors: u64,
    hist: Histogram<u64>,
}

impl Recorder {
    pub fn new(tx: Sender<Slice>, interval_ns: Nanos) -> Recorder {
        Recorder {
            tx,
            interval_ns: interval_ns.max(1),
            next_end: Nanos::MAX,
            index: 0,
            ios: 0,
            errors: 0,
            hist: interval_histogram(),
        }
    }

    pub fn start(&mut self, now: Nanos) {
        self.next_end = now + self.interval_ns;
    }

    /// One completion at `now` after `latency_ns`.
    #[inline]
    pub fn record(&mut self, now: Nanos, latency_ns: u64, ok: bool) {
        while now >= self.next_end {
            self.hand_over();
        }
        self.hist.saturating_record(latency_ns.max(1));
        self.ios += 1;
        self.errors += u64::from(!ok);
    }

    /// The job ended: hands over the last, partial interval.
    pub fn finish(&mut self) {
        if self.ios > 0 {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        let slice = Slice {
            index: self.index,
            end_ns: self.next_end,
            ios: std::mem::take(&mut self.ios),
            errors: std::mem::take(&mut self.errors),
            latency_ns: std::mem::replace(&mut self.hist, interval_histogram()),
        };
        // The main thread is gone only when the run failed; nothing to report then.
        let _ = self.tx.send(slice);
        self.index += 1;
        self.next_end += self.interval_ns;
    }
}

/// Something that happened during the run.
#[derive(Clone, Debug)]
pub struct Event {
    pub at_ns: Nanos,
    pub what: String,
}

/// Watches every volume's routing table and reports the shards whose owner or member changed.
#[derive(Default)]
pub struct Watcher {
    /// Volume -> per shard (owner core, member).
    last: BTreeMap<String, Vec<(usize, String)>>,
}

impl Watcher {
    pub fn poll(&mut self, pools: &PoolService, cores: &[usize], now: Nanos) -> Vec<Event> {
        let mut events = Vec::new();
        for (_, name, volume) in pools.volumes() {
            let table = volume.table();
            let now_routes: Vec<(usize, String)> = table
                .shards
                .iter()
                .map(|r| {
                    let core = cores.get(r.owner as usize).copied();
                    (core.unwrap_or(r.owner as usize), r.member_name.clone())
                })
                .collect();
            if let Some(before) = self.last.get(&name) {
                for (i, (b, n)) in before.iter().zip(&now_routes).enumerate() {
                    if b != n {
                        events.push(Event {
                            at_ns: now,
                            what: format!(
                                "{name} shard {i}: core {} {} -> core {} {}",
                                b.0, b.1, n.0, n.1
                            ),
                        });
                    }
                }
            }
            self.last.insert(name, now_routes);
        }
        events
    }
}

/// One interval of the whole run.
#[derive(Clone, Debug)]
pub struct Point {
    pub t_s: f64,
    pub iops: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// The interval's latencies as (value in ns, count) pairs, lowest first: a script merges
    /// them into the exact percentiles of a phase (the I/Os during a copy, say).
    pub latency_ns: Vec<(u64, u64)>,
}

/// Merges the jobs' slices interval by interval; times are seconds since `t0`.
pub fn merge(slices: Vec<Slice>, t0: Nanos, interval_ns: Nanos) -> Vec<Point> {
    let mut by_index: BTreeMap<u64, (Nanos, u64, u64, Histogram<u64>)> = BTreeMap::new();
    for s in slices {
        let e = by_index
            .entry(s.index)
            .or_insert_with(|| (0, 0, 0, interval_histogram()));
        e.0 = e.0.max(s.end_ns);
        e.1 += s.ios;
        e.2 += s.errors;
        let _ = e.3.add(&s.latency_ns);
    }
    let secs = interval_ns as f64 / 1e9;
    by_index
        .into_values()
        .map(|(end, ios, errors, h)| {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            Point {
                t_s: end.saturating_sub(t0) as f64 / 1e9,
                iops: ios as f64 / secs,
                errors,
                p50_us: us(0.5),
                p99_us: us(0.99),
                p999_us: us(0.999),
                latency_ns: h
                    .iter_recorded()
                    .map(|v| {
                        (
                            h.highest_equivalent(v.value_iterated_to()),
                            v.count_at_value(),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

pub fn to_json(points: &[Point], events: &[Event], t0: Nanos, interval_ns: Nanos) -> Value {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "interval_ms": interval_ns as f64 / 1e6,
        // The engine clock at time 0 (what `migration_get_status`'s `started_ms` counts in).
        "t0_ms": t0 as f64 / 1e6,
        "points": points.iter().map(|p| json!({
            "t_s": round(p.t_s), "iops": p.iops.round(), "errors": p.errors,
            "p50_us": round(p.p50_us), "p99_us": round(p.p99_us), "p999_us": round(p.p999_us),
            "latency_ns": p.latency_ns,
        })).collect::<Vec<_>>(),
        "events": events.iter().map(|e| json!({
            "t_s": round(e.at_ns.saturating_sub(t0) as f64 / 1e9), "what": e.what,
        })).collect::<Vec<_>>(),
    })
}

/// Draws the timeline: IOPS above, latency percentiles (log scale) below, events as dashed
/// vertical lines numbered in both panels and listed under the plot.
pub fn svg(title: &str, points: &[Point], events: &[Event], t0: Nanos) -> String {
    const W: f64 = 900.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 50.0;
    const PANEL: f64 = 200.0;
    const GAP: f64 = 50.0;
    let list_h = 16.0 * events.len().min(12) as f64;
    let h = TOP + 2.0 * PANEL + GAP + 50.0 + list_h;
    let t_max = points.iter().map(|p| p.t_s).fold(1e-3, f64::max);
    let x_of = |t: f64| LEFT + (W - LEFT - RIGHT) * (t / t_max).clamp(0.0, 1.0);
    let iops_max = points.iter().map(|p| p.iops).fold(1.0, f64::max) * 1.1;
    let top_y = |v: f64| TOP + PANEL * (1.0 - v / iops_max);
    let lat: Vec<f64> = points
        .iter()
        .flat_map(|p| [p.p50_us, p.p999_us])
        .filter(|v| *v > 0.0)
        .collect();
    let lo = lat
        .iter()
        .copied()
        .fold(f64::MAX, f64::min)
        .max(1e-3)
        .log10()
        .floor();
    let hi = lat
        .iter()
        .copied()
        .fold(1e-3, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let low_top = TOP + PANEL + GAP;
    let low_y = |us: f64| low_top + PANEL * (1.0 - (us.max(1e-3).log10() - lo) / (hi - lo));
    let mut s = svg_start(W, h, title);
    for (panel_top, label) in [(TOP, "IOPS"), (low_top, "latency (us)")] {
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{panel_top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/><text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">{label}</text>"##,
            W - LEFT - RIGHT,
            panel_top + PANEL / 2.0,
            panel_top + PANEL / 2.0
        );
    }
    for k in 0..=4 {
        let v = iops_max * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            top_y(v) + 4.0,
            si(v)
        );
    }
    let mut d = lo;
    while d <= hi {
        let y = low_y(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            10f64.powf(d)
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{:.1}" text-anchor="middle">time (s), up to {t_max:.1}</text>"#,
        W / 2.0,
        low_top + PANEL + 30.0
    );
    let line = |s: &mut String, color: &str, ys: &dyn Fn(&Point) -> f64, name: &str, k: usize| {
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p.t_s), ys(p)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{:.1}" y="{:.1}" fill="{color}">{name}</text>"#,
            pts.join(" "),
            W - RIGHT - 70.0,
            low_top + 16.0 * (k as f64 + 1.0)
        );
    };
    line(&mut s, "#1f77b4", &|p| top_y(p.iops), "", 0);
    line(&mut s, "#2ca02c", &|p| low_y(p.p50_us), "p50", 0);
    line(&mut s, "#ff7f0e", &|p| low_y(p.p99_us), "p99", 1);
    line(&mut s, "#d62728", &|p| low_y(p.p999_us), "p99.9", 2);
    for (i, e) in events.iter().enumerate() {
        let t = e.at_ns.saturating_sub(t0) as f64 / 1e9;
        let x = x_of(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#9467bd" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#9467bd">{}</text>"##,
            low_top + PANEL,
            x + 3.0,
            TOP + 12.0 + 12.0 * (i % 4) as f64,
            i + 1
        );
        if i < 12 {
            let _ = writeln!(
                s,
                r##"<text x="{LEFT}" y="{:.1}" fill="#9467bd">{}: {t:.2} s {}</text>"##,
                low_top + PANEL + 50.0 + 16.0 * i as f64,
                i + 1,
                xml_escape(&e.what)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_merge_by_interval_and_the_drawing_marks_events() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut a = Recorder::new(tx.clone(), 100);
        let mut b = Recorder::new(tx, 100);
        a.start(1000);
        b.start(1000);
        for t in 1000..1100 {
            a.record(t, 10, true);
        }
        for t in (1000..1300).step_by(2) {
            b.record(t, 1000, t % 10 != 0);
        }
        a.finish();
        b.finish();
        let slices: Vec<Slice> = rx.try_iter().collect();
        assert_eq!(slices.len(), 1 + 3);
        let points = merge(slices, 1000, 100);
        assert_eq!(points.len(), 3);
        // Interval 0: a's 100 I/Os at 10 ns and b's 50 at 1 us.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b;
        assert!(close(points[0].iops, 1.5e9), "{}", points[0].iops);
        assert!((points[0].t_s - 100e-9).abs() < 1e-12);
        assert!(points[0].p50_us < 0.011 && points[0].p99_us > 0.99);
        assert!(close(points[1].iops, 5e8), "{}", points[1].iops);
        // b failed every fifth I/O (t % 10 == 0 among even t).
        assert_eq!(points.iter().map(|p| p.errors).sum::<u64>(), 30);
        let events = vec![Event {
            at_ns: 1150,
            what: "vol0 shard 1: core 0 M0 -> core 1 M0".into(),
        }];
        let json = to_json(&points, &events, 1000, 100);
        assert_eq!(json["points"].as_array().unwrap().len(), 3);
        assert_eq!(json["events"][0]["what"], events[0].what);
        let drawing = svg("t", &points, &events, 1000);
        assert!(drawing.starts_with("<svg") && drawing.trim_end().ends_with("</svg>"));
        assert_eq!(drawing.matches("<polyline").count(), 4);
        assert!(drawing.contains("stroke-dasharray") && drawing.contains("core 0 M0 -&gt; core 1"));
    }
}
