//! The statistics page (`/ui/stats`): the hosting's graphs, drawn here as
//! inline SVG (no JavaScript: the page's CSP stays strict), and its usage
//! this month. A graph is a viewBox of [`W`]×[`H`] scaled to the page's
//! width, so it reads on a phone; every number in it is computed here.

use axum::extract::{Query, State};
use axum::response::Response;

use super::session::{render, Nav, WebError, WebUser};
use crate::api::stats::{stats_of, StatsRange};
use crate::api::AppState;
use crate::store::samples::Point;

/// The drawing's size, in viewBox units.
pub const W: f64 = 600.0;
pub const H: f64 = 140.0;

/// One line of a graph: polyline segments (broken where samples are
/// missing), as `x,y x,y …` of numbers only.
pub struct Line {
    pub name: &'static str,
    /// CSS class (its colour).
    pub class: &'static str,
    pub segments: Vec<String>,
    /// The newest value, formatted.
    pub latest: String,
}

/// One graph.
pub struct Graph {
    pub id: &'static str,
    pub title: &'static str,
    /// The top of the scale, formatted.
    pub max: String,
    pub lines: Vec<Line>,
    /// Whether any line has a point.
    pub any: bool,
    /// What the page says when no line has one.
    pub empty: &'static str,
}

/// How a value is shown.
#[derive(Clone, Copy)]
enum Unit {
    Percent,
    Bytes,
    BytesPerS,
    PerS,
}

impl Unit {
    fn fmt(self, v: f64) -> String {
        let scaled = |v: f64, suffix: &str| {
            let units = ["", "Ki", "Mi", "Gi", "Ti"];
            let mut v = v;
            let mut i = 0;
            while v >= 1024.0 && i < units.len() - 1 {
                v /= 1024.0;
                i += 1;
            }
            format!("{v:.1} {}{suffix}", units[i])
        };
        match self {
            Unit::Percent => format!("{v:.1} %"),
            Unit::Bytes => scaled(v, "B"),
            Unit::BytesPerS => scaled(v, "B/s"),
            Unit::PerS => format!("{v:.2}/s"),
        }
    }
}

type Pick = fn(&Point) -> Option<f64>;

/// What the graphs span: `[from, from + span)` in buckets of `step` s.
struct Frame<'a> {
    points: &'a [Point],
    from: chrono::DateTime<chrono::Utc>,
    span: chrono::Duration,
    step: f64,
}

/// Draws the series `picks` of the frame's points.
fn graph(
    id: &'static str,
    title: &'static str,
    unit: Unit,
    frame: &Frame,
    picks: &[(&'static str, &'static str, Pick)],
) -> Graph {
    let Frame {
        points,
        from,
        span,
        step,
    } = *frame;
    let max = picks
        .iter()
        .flat_map(|(_, _, f)| points.iter().filter_map(f))
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let span_s = span.num_seconds() as f64;
    let mut lines = vec![];
    for (name, class, f) in picks {
        let mut segments = vec![];
        let mut cur = String::new();
        let mut last_t: Option<f64> = None;
        let mut latest = None;
        for p in points {
            let t = (p.at - from).num_milliseconds() as f64 / 1000.0;
            let Some(v) = f(p) else {
                continue;
            };
            // A bucket skipped: the line breaks.
            if last_t.is_some_and(|l| t - l > step * 1.5) && !cur.is_empty() {
                segments.push(std::mem::take(&mut cur));
            }
            let x = (t / span_s).clamp(0.0, 1.0) * W;
            let y = H - (v / top).clamp(0.0, 1.0) * H;
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(&format!("{x:.1},{y:.1}"));
            last_t = Some(t);
            latest = Some(v);
        }
        if !cur.is_empty() {
            segments.push(cur);
        }
        lines.push(Line {
            name,
            class,
            segments,
            latest: latest.map_or("–".to_string(), |v| unit.fmt(v)),
        });
    }
    Graph {
        id,
        title,
        max: unit.fmt(top),
        any: lines.iter().any(|l| !l.segments.is_empty()),
        lines,
        empty: "No data in this range.",
    }
}

/// The graphs of a hosting's points.
pub fn graphs(points: &[Point], range: StatsRange, step: u32) -> Vec<Graph> {
    let (span, _) = range.span(step.into());
    let frame = Frame {
        points,
        from: chrono::Utc::now() - span,
        span,
        step: f64::from(step),
    };
    let g = |id, title, unit, picks: &[(&'static str, &'static str, Pick)]| {
        graph(id, title, unit, &frame, picks)
    };
    vec![
        g(
            "cpu",
            "CPU (100 % = one vCPU busy)",
            Unit::Percent,
            &[("CPU", "s1", |p| p.cpu_percent)],
        ),
        g(
            "memory",
            "Memory held on the host",
            Unit::Bytes,
            &[("memory", "s1", |p| p.memory_bytes)],
        ),
        g(
            "disk",
            "Disk I/O",
            Unit::BytesPerS,
            &[
                ("read", "s1", |p| p.disk_read_bps),
                ("written", "s2", |p| p.disk_write_bps),
            ],
        ),
        Graph {
            empty: if points.is_empty() {
                "No data in this range."
            } else {
                "Not counted: this host's guests use user-mode networking (passt), which has no \
                 host-side device for libvirt to count. What the site sends is below."
            },
            ..g(
                "network",
                "Network (guest interface)",
                Unit::BytesPerS,
                &[
                    ("received", "s1", |p| p.net_rx_bps),
                    ("sent", "s2", |p| p.net_tx_bps),
                ],
            )
        },
        g(
            "requests",
            "Requests to the site",
            Unit::PerS,
            &[("requests", "s1", |p| p.requests_per_s)],
        ),
        g(
            "traffic",
            "Bytes the site sent",
            Unit::BytesPerS,
            &[("sent", "s1", |p| p.http_bytes_per_s)],
        ),
    ]
}

#[derive(askama::Template)]
#[template(path = "web/stats.html")]
pub(super) struct StatsPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) range: &'static str,
    /// The ranges offered, and whether each is the one shown.
    pub(super) ranges: Vec<(&'static str, bool)>,
    pub(super) step: u32,
    pub(super) sampling: bool,
    pub(super) graphs: Vec<Graph>,
    pub(super) w: f64,
    pub(super) h: f64,
    /// This month's usage: (what, amount) rows.
    pub(super) usage: Vec<(&'static str, String)>,
}

#[derive(serde::Deserialize)]
pub(super) struct RangeParam {
    range: Option<String>,
}

/// `GET /ui/stats?range=1h|24h|30d`.
pub(super) async fn stats_page(
    State(st): State<AppState>,
    u: WebUser,
    Query(q): Query<RangeParam>,
) -> Result<Response, WebError> {
    let Some(rec) = super::pages::my_record(&st, u.user.id).await? else {
        return Ok(super::forms::to_hosting());
    };
    let range = StatsRange::parse(q.range.as_deref())?;
    let view = stats_of(&st, &rec, range).await?;
    let now = st.store.now();
    let month = crate::api::usage::RangeQuery::default().parse(now)?;
    let totals = crate::api::usage::usage_of(&st, Some(u.user.id), month)
        .await?
        .totals;
    let h = |s: f64| s / 3600.0;
    let mut usage = vec![
        ("vCPU-hours", format!("{:.2}", h(totals.vcpu_seconds))),
        (
            "Memory GiB-hours",
            format!("{:.2}", h(totals.memory_mib_seconds) / 1024.0),
        ),
        (
            "Disk GiB-hours",
            format!("{:.2}", h(totals.disk_gib_seconds)),
        ),
        (
            "Backup GiB-hours",
            format!("{:.2}", h(totals.backup_gib_seconds)),
        ),
        ("Site traffic", Unit::Bytes.fmt(totals.egress_bytes)),
    ];
    for (currency, amount) in &totals.charges {
        usage.push(("Charges", format!("{amount:.2} {currency}")));
    }
    Ok(render(&StatsPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        range: range.as_str(),
        ranges: ["1h", "24h", "30d"]
            .into_iter()
            .map(|r| (r, r == range.as_str()))
            .collect(),
        step: view.step_seconds,
        sampling: view.sample_seconds > 0,
        graphs: graphs(&view.points, range, view.step_seconds),
        w: W,
        h: H,
        usage,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(secs_ago: i64, cpu: Option<f64>) -> Point {
        Point {
            at: chrono::Utc::now() - chrono::Duration::seconds(secs_ago),
            seconds: 15.0,
            cpu_percent: cpu,
            memory_bytes: None,
            disk_read_bps: None,
            disk_write_bps: None,
            disk_allocation_bytes: None,
            net_rx_bps: None,
            net_tx_bps: None,
            requests_per_s: None,
            http_bytes_per_s: None,
            status: None,
        }
    }

    #[test]
    fn lines_break_at_gaps_and_scale_to_the_highest_value() {
        let pts = [
            point(600, Some(50.0)),
            point(585, Some(100.0)),
            // 10 minutes without samples
            point(30, Some(10.0)),
            point(15, None),
        ];
        let g = &graphs(&pts, StatsRange::Hour, 15)[0];
        assert!(g.any);
        let l = &g.lines[0];
        assert_eq!(l.segments.len(), 2, "{:?}", l.segments);
        assert_eq!(l.latest, "10.0 %");
        assert_eq!(g.max, "110.0 %");
        // The highest point is at 1/1.1 of the height from the bottom.
        let y: f64 = l.segments[0]
            .split(' ')
            .nth(1)
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!((y - (H - H / 1.1)).abs() < 0.1, "{y}");
        let empty = &graphs(&[], StatsRange::Day, 300)[4];
        assert!(!empty.any);
    }
}
