//! What tidepool-perf prints and writes: the results table, `--json`, `--hgrm` (HdrHistogram's
//! percentile-distribution text, in microseconds) and `--plot` (an SVG of the latency
//! percentile distribution, drawn here with no plotting library).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use tidepool::reactor::ReactorStats;

/// A histogram for I/O latencies in nanoseconds, from 1 ns to an hour, with two significant
/// digits: a value is kept to within 1/128 of itself (0.8 %), as fine as SPDK's latency
/// histograms and twice as fine as fio's. Three digits made the counts eight times larger
/// (tens of KiB over the range a run touches), and with every job recording every I/O, the
/// benchmark's own cache misses on them showed up in its figures.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("static histogram bounds are valid")
}

/// Latency figures in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyUs {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
}

impl LatencyUs {
    pub fn from_ns(h: &Histogram<u64>) -> LatencyUs {
        let us = |ns: u64| ns as f64 / 1e3;
        if h.is_empty() {
            return LatencyUs {
                avg: 0.0,
                min: 0.0,
                max: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                p99_99: 0.0,
            };
        }
        LatencyUs {
            avg: h.mean() / 1e3,
            min: us(h.min()),
            max: us(h.max()),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            p99_99: us(h.value_at_quantile(0.9999)),
        }
    }
}

/// One row of the results: a job or the total.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bdev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<usize>,
    pub iops: f64,
    pub mib_per_s: f64,
    pub errors: u64,
    pub latency_us: LatencyUs,
}

#[derive(Serialize)]
pub struct Report {
    pub jobs: Vec<Row>,
    pub total: Row,
}

/// How volume requests were routed: pieces executed by the reactor that took them, sent to
/// the shard's owner on another reactor, or forwarded after the owner changed.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Routing {
    pub local: u64,
    pub remote: u64,
    pub forwarded: u64,
}

impl Routing {
    /// The share of pieces that crossed reactors, in percent.
    pub fn crossed_percent(&self) -> f64 {
        let all = self.local + self.remote;
        if all == 0 {
            0.0
        } else {
            100.0 * self.remote as f64 / all as f64
        }
    }
}

pub fn print_routing(r: &Routing) {
    println!(
        "Volume routing: {} piece(s) on the taking reactor, {} sent to the owner on another \
         ({:.1}% crossed reactors), {} forwarded",
        r.local,
        r.remote,
        r.crossed_percent(),
        r.forwarded
    );
}

/// One reactor's time over the run: the share of it spent on polls that did work. A reactor
/// below 100 % waited for something (a volume's pieces on another reactor, say) with nothing
/// of its own to do.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ReactorBusy {
    pub reactor: u16,
    pub core: usize,
    pub busy_percent: f64,
    pub polls: u64,
}

impl ReactorBusy {
    /// The difference between two snapshots of one reactor's counters.
    pub fn between(before: &ReactorStats, after: &ReactorStats) -> ReactorBusy {
        let busy = after.busy_ns.saturating_sub(before.busy_ns);
        let idle = after.idle_ns.saturating_sub(before.idle_ns);
        ReactorBusy {
            reactor: after.reactor,
            core: after.core,
            busy_percent: 100.0 * busy as f64 / (busy + idle).max(1) as f64,
            polls: after.polls.saturating_sub(before.polls),
        }
    }
}

pub fn print_reactors(reactors: &[ReactorBusy]) {
    let each: Vec<String> = reactors
        .iter()
        .map(|r| {
            format!(
                "{} (core {}) {:.1}% busy, {} polls",
                r.reactor, r.core, r.busy_percent, r.polls
            )
        })
        .collect();
    println!("Reactors: {}", each.join("; "));
}

pub fn print_table(report: &Report) {
    println!(
        "\n{:<24} {:>5} {:>12} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "Device",
        "core",
        "IOPS",
        "MiB/s",
        "errors",
        "avg_us",
        "min_us",
        "p50_us",
        "p90_us",
        "p99_us",
        "p99.9_us",
        "p99.99_us",
        "max_us"
    );
    let line = |name: &str, core: String, r: &Row| {
        let l = &r.latency_us;
        println!(
            "{:<24} {:>5} {:>12.0} {:>10.2} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>10.2}",
            name, core, r.iops, r.mib_per_s, r.errors, l.avg, l.min, l.p50, l.p90, l.p99, l.p99_9,
            l.p99_99, l.max
        );
    };
    for j in &report.jobs {
        let core = j.core.map_or("-".to_string(), |c| c.to_string());
        line(j.bdev.as_deref().unwrap_or("-"), core, j);
    }
    line("Total", "-".to_string(), &report.total);
}

/// The percentile distribution in HdrHistogram's text format (values in microseconds), five
/// ticks per halving of the remaining distance to 100%.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value_us = h.highest_equivalent(v.value_iterated_to()) as f64 / 1e3;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{:>12.3} {:>14.12} {:>10} {:>14.2}",
                value_us,
                q,
                total,
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{:>12.3} {:>14.12} {:>10}", value_us, q, total);
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1e3,
        h.stdev() / 1e3
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1e3,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// An SVG line chart of latency (µs, log scale) against percentile (log scale of
/// 1/(1-p), from 0% to 99.999%).
pub fn plot_svg(title: &str, series: &[(String, &Histogram<u64>)]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 520.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 50.0;
    const BOTTOM: f64 = 60.0;
    const MAX_NINES: f64 = 5.0; // x axis ends at 99.999%
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let (mut lo, mut hi) = (f64::MAX, 0f64);
    for (_, h) in series {
        if !h.is_empty() {
            lo = lo.min(h.min().max(1) as f64 / 1e3);
            hi = hi.max(h.max() as f64 / 1e3);
        }
    }
    if lo > hi {
        (lo, hi) = (1.0, 10.0);
    }
    let (log_lo, log_hi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x_of = |q: f64| LEFT + (W - LEFT - RIGHT) * ((-(1.0 - q).max(1e-5).log10()) / MAX_NINES);
    let y_of = |us: f64| {
        TOP + (H - TOP - BOTTOM) * (1.0 - (us.max(1e-3).log10() - log_lo) / (log_hi - log_lo))
    };
    let mut s = svg_start(W, H, title);
    for nines in 0..=MAX_NINES as u32 {
        let q = 1.0 - 10f64.powi(-(nines as i32));
        let x = x_of(q);
        let label = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"][nines as usize];
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    let mut decade = log_lo;
    while decade <= log_hi {
        let y = y_of(10f64.powf(decade));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_us(10f64.powf(decade))
        );
        decade += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">latency (us)</text>"#,
        W / 2.0,
        H - 15.0,
        H / 2.0,
        H / 2.0
    );
    for (i, (name, h)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = h
            .iter_quantiles(10)
            .filter(|v| v.quantile_iterated_to() <= 1.0 - 1e-5)
            .map(|v| {
                let us = h.highest_equivalent(v.value_iterated_to()) as f64 / 1e3;
                format!("{:.1},{:.1}", x_of(v.quantile_iterated_to()), y_of(us))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#,
            LEFT + 10.0,
            TOP + 16.0 * (i as f64 + 1.0),
            xml_escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_us(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The opening of a `w` x `h` SVG plot: the root element, a white background and `title`
/// centred at the top. The caller draws the rest and closes the `<svg>`.
pub fn svg_start(w: f64, h: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="25" text-anchor="middle" font-size="16">{}</text>"#,
        w / 2.0,
        xml_escape(title)
    );
    s
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut h = latency_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1000).unwrap(); // 1 µs .. 10 ms
        }
        h
    }

    #[test]
    fn hgrm_lines_are_monotone_and_end_at_the_total() {
        let text = hgrm(&sample());
        let rows: Vec<Vec<f64>> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.contains("Value"))
            .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20);
        for w in rows.windows(2) {
            assert!(w[1][0] >= w[0][0] && w[1][1] >= w[0][1] && w[1][2] >= w[0][2]);
        }
        assert_eq!(rows.last().unwrap()[2], 10_000.0);
        assert!(text.contains("Total count    =        10000"));
    }

    #[test]
    fn latency_summary_in_microseconds() {
        let l = LatencyUs::from_ns(&sample());
        // Within the histogram's precision: 1/128 of the value.
        assert!((l.p50 - 5000.0).abs() <= 5000.0 / 128.0, "{l:?}");
        assert!((l.avg - 5000.5).abs() < 5.0);
        assert!((l.min - 1.0).abs() < 0.01);
    }

    #[test]
    fn latencies_are_kept_to_within_one_128th_from_a_nanosecond_to_an_hour() {
        let mut h = latency_histogram();
        for v in [1u64, 255, 1_000, 123_456, 9_876_543, 3_599_999_999_999] {
            h.record(v).unwrap();
            let (low, high) = (h.lowest_equivalent(v), h.highest_equivalent(v));
            assert!(
                (high - low) * 128 <= v.max(128),
                "{v} kept as {low}..={high}"
            );
        }
        // The range is an hour, rounded up to the histogram's next bucket (about 73 min).
        assert!(
            h.record(2 * 3_600_000_000_000).is_err(),
            "two hours are out of range"
        );
    }

    #[test]
    fn plot_is_an_svg_with_one_line_per_series() {
        let h = sample();
        let svg = plot_svg("t<est>", &[("a".into(), &h), ("b".into(), &h)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t&lt;est&gt;"));
    }
}
