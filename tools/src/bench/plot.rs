//! Line charts as SVG, side by side in one file: enough for a bench's curves, with no
//! plotting dependency (and nothing to install on the machine that runs the bench).

use std::fmt::Write;

const WIDTH: f64 = 520.0;
const HEIGHT: f64 = 360.0;
/// Plot area margins: left (tick labels), right, top (title), bottom (axis label, legend).
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 112.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

pub struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

impl Series {
    /// A curve; `color` picks from a fixed palette, `dashed` marks a baseline.
    pub fn new(label: &str, color: usize, dashed: bool, points: Vec<(f64, f64)>) -> Self {
        let points = points.into_iter().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        Self {
            label: label.to_owned(),
            color: COLORS.get(color % COLORS.len()).copied().unwrap_or("#000"),
            dashed,
            points,
        }
    }
}

pub struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    log_y: bool,
    series: Vec<Series>,
}

impl Chart {
    pub fn new(title: &str, x_label: &str, y_label: &str, log_y: bool) -> Self {
        Self { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), log_y, series: Vec::new() }
    }

    pub fn add(&mut self, series: Series) {
        self.series.push(series);
    }

    /// The y value as drawn (log10 on a log scale, where values below 0.01 are clamped).
    fn y_of(&self, y: f64) -> f64 {
        if self.log_y {
            y.max(0.01).log10()
        } else {
            y
        }
    }

    fn render(&self, out: &mut String, left: f64) {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x_max, mut y_lo, mut y_hi) = (0.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points {
            x_max = x_max.max(x);
            y_lo = y_lo.min(self.y_of(y));
            y_hi = y_hi.max(self.y_of(y));
        }
        let x_ticks = ticks(0.0, x_max.max(1.0));
        let y_ticks = if self.log_y {
            let (lo, hi) = (y_lo.min(0.0).floor(), y_hi.max(lo_plus_one(y_lo)).ceil());
            (lo as i32..=hi as i32).map(f64::from).collect::<Vec<_>>()
        } else {
            ticks(0.0, y_hi.max(1.0))
        };
        let x_end = x_ticks.last().copied().unwrap_or(1.0);
        let (y_start, y_end) = (y_ticks.first().copied().unwrap_or(0.0), y_ticks.last().copied().unwrap_or(1.0));
        let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |x: f64| left + LEFT + x / x_end * w;
        let py = |y: f64| TOP + h - (y - y_start) / (y_end - y_start).max(f64::EPSILON) * h;

        let _ = writeln!(out, r#"<text x="{}" y="40" font-weight="bold">{}</text>"#, left + LEFT, escape(&self.title));
        for &t in &x_ticks {
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{b:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{l:.1}" text-anchor="middle">{}</text>"##,
                number(t),
                x = px(t),
                b = TOP + h,
                l = TOP + h + 16.0
            );
        }
        for &t in &y_ticks {
            let label = if self.log_y { number(10f64.powf(t)) } else { number(t) };
            let _ = writeln!(
                out,
                r##"<line x1="{a:.1}" y1="{y:.1}" x2="{b:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{l:.1}" y="{t:.1}" text-anchor="end">{label}</text>"##,
                a = left + LEFT,
                b = left + LEFT + w,
                y = py(t),
                l = left + LEFT - 6.0,
                t = py(t) + 4.0
            );
        }
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{TOP}" width="{w:.1}" height="{h:.1}" fill="none" stroke="#888"/>"##,
            left + LEFT
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + LEFT + w / 2.0,
            TOP + h + 34.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}{}</text>"#,
            left + 14.0,
            TOP + h / 2.0,
            left + 14.0,
            TOP + h / 2.0,
            escape(&self.y_label),
            if self.log_y { " (log)" } else { "" }
        );
        for (i, s) in self.series.iter().enumerate() {
            let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            let path: Vec<String> =
                s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(self.y_of(y)))).collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                s.color
            );
            for &(x, y) in &s.points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    px(x),
                    py(self.y_of(y)),
                    s.color
                );
            }
            // The legend, two entries per row under the axis label.
            let (col, row) = ((i % 2) as f64, (i / 2) as f64);
            let (lx, ly) = (left + LEFT + col * w / 2.0, TOP + h + 56.0 + row * 18.0);
            let _ = writeln!(
                out,
                r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
                ly - 4.0,
                lx + 24.0,
                ly - 4.0,
                s.color,
                lx + 30.0,
                escape(&s.label)
            );
        }
    }
}

fn lo_plus_one(lo: f64) -> f64 {
    if lo.is_finite() {
        lo + 1.0
    } else {
        1.0
    }
}

/// The charts side by side under one title, as an SVG document.
pub fn render(title: &str, charts: &[Chart]) -> String {
    let width = WIDTH * charts.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#, escape(title));
    for (i, chart) in charts.iter().enumerate() {
        chart.render(&mut out, WIDTH * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

/// About five round tick values from `lo` to at least `hi` (1, 2 or 5 times a power of ten apart).
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(magnitude * 10.0);
    let mut out = vec![lo];
    while out.last().is_some_and(|t| *t < hi) && out.len() < 100 {
        out.push(lo + step * out.len() as f64);
    }
    out
}

/// A tick label: 12,500 → "12.5k"; 0.05 → "0.05".
fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let k = v / 1000.0;
        if k.fract().abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_owned()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 23_000.0), [0.0, 5000.0, 10000.0, 15000.0, 20000.0, 25000.0]);
        assert_eq!(ticks(0.0, 1.0).len(), 6);
        assert_eq!(ticks(0.0, 190.0), [0.0, 50.0, 100.0, 150.0, 200.0]);
        assert_eq!(number(12_500.0), "12.5k");
        assert_eq!(number(0.05), "0.05");
        assert_eq!(number(20.0), "20");
    }

    #[test]
    fn a_chart_renders_every_point_and_escapes_labels() {
        let mut chart = Chart::new("cpu", "msg/s", "µs", false);
        chart.add(Series::new("a<b", 0, false, vec![(100.0, 50.0), (1000.0, 20.0), (f64::NAN, 1.0)]));
        let mut tails = Chart::new("tails", "msg/s", "ms", true);
        tails.add(Series::new("p99", 1, true, vec![(100.0, 0.4), (1000.0, 150.0)]));
        let svg = render("t", &[chart, tails]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 4, "the NaN point is left out");
        assert!(svg.contains("a&lt;b") && svg.contains("stroke-dasharray"));
        // The log axis spans the decades of the values: 0.1 ms to 1000 ms.
        assert!(svg.contains(">0.1<") && svg.contains(">1k<"));
    }
}
