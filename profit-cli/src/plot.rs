//! SVG plots (plotters' SVG backend: no system libraries, no font files).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

/// A diverging blue-white-red colour for `v` in `[-lim, lim]`.
fn diverging(v: f64, lim: f64) -> RGBColor {
    let t = if v.is_finite() { (v / lim).clamp(-1.0, 1.0) } else { 0.0 };
    let lerp = |a: f64, b: f64, s: f64| (a + (b - a) * s).round() as u8;
    if t < 0.0 {
        let s = -t;
        RGBColor(lerp(255.0, 33.0, s), lerp(255.0, 102.0, s), lerp(255.0, 172.0, s))
    } else {
        RGBColor(lerp(255.0, 178.0, t), lerp(255.0, 24.0, t), lerp(255.0, 43.0, t))
    }
}

/// One heatmap panel: `values[j * n + i]` is the value at cell `(i, j)` of an `n x n` grid over
/// `[lo, hi]^2` (`i` along x, `j` along y).
pub struct Panel {
    pub title: String,
    pub values: Vec<f32>,
}

/// Heatmaps side by side (the paper's Figure 3), with the two domains outlined:
/// `boxes` are `(x0, x1)` squares drawn on every panel.
pub fn heatmaps(
    path: &Path,
    n: usize,
    lo: f64,
    hi: f64,
    panels: &[Panel],
    boxes: &[(f64, f64)],
) -> Result<(), String> {
    let w = 260 * panels.len() as u32;
    let root = SVGBackend::new(path, (w, 300)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len()));
    let cell = (hi - lo) / n as f64;
    for (area, panel) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(20)
            .y_label_area_size(28)
            .build_cartesian_2d(lo..hi, lo..hi)
            .map_err(err)?;
        chart.configure_mesh().disable_mesh().x_labels(6).y_labels(6).draw().map_err(err)?;
        chart
            .draw_series(panel.values.iter().enumerate().map(|(k, &v)| {
                let (i, j) = ((k % n) as f64, (k / n) as f64);
                let (x0, y0) = (lo + i * cell, lo + j * cell);
                Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], diverging(v as f64, 1.5).filled())
            }))
            .map_err(err)?;
        for &(a, b) in boxes {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(a, a), (b, a), (b, b), (a, b), (a, a)],
                    BLACK.stroke_width(1),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Line plot of several series on a log y axis.
pub fn curves(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let pts = series.iter().flat_map(|(_, s)| s.iter()).filter(|p| p.1.is_finite() && p.1 > 0.0);
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, 0.0f64);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !(y0.is_finite() && y1 > 0.0) {
        (y0, y1) = (1e-3, 1.0);
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x1, (y0 * 0.8..y1 * 1.25).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| crate::common::fmt(*y))
        .draw()
        .map_err(err)?;
    for (k, (name, s)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let dashed = name.contains("original");
        let style = if dashed { color.stroke_width(1) } else { color.stroke_width(2) };
        chart
            .draw_series(LineSeries::new(s.iter().copied().filter(|p| p.1.is_finite() && p.1 > 0.0), style))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// What a scatter point is, for its colour and marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A baseline (full, head, SGD, Adam, pre-trained): black square.
    Baseline,
    /// PROFIT with the realized delta: blue circle.
    Realized,
    /// PROFIT with the accumulated delta: red triangle.
    Accumulated,
    /// PROFIT with `lr_ref = 0`: grey circle.
    Control,
}

/// One labelled point of an old-vs-new scatter plot.
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: String,
    pub marker: Marker,
    /// On the Pareto front: drawn with a ring.
    pub front: bool,
}

/// An old-vs-new scatter plot (one point per arm), log axes when `log`.
pub fn scatter(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[Point],
    log: bool,
) -> Result<(), String> {
    let root = SVGBackend::new(path, (820, 660)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (root, legend) = root.split_vertically(620);
    legend
        .draw(&Text::new(
            "black squares: baselines and the pre-trained model; blue circles: PROFIT, realized delta; red triangles: accumulated delta; grey: lr_ref = 0; labels: lr_main / lr_ref; ringed: Pareto front",
            (10, 10),
            ("sans-serif", 11).into_font(),
        ))
        .map_err(err)?;
    let ok = |v: f64| v.is_finite() && (!log || v > 0.0);
    let pts: Vec<&Point> = points.iter().filter(|p| ok(p.x) && ok(p.y)).collect();
    let range = |f: &dyn Fn(&Point) -> f64| {
        let (lo, hi) = pts
            .iter()
            .map(|p| f(p))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |a, v| (a.0.min(v), a.1.max(v)));
        if !(lo.is_finite() && hi.is_finite()) {
            (if log { 1e-3 } else { 0.0 }, 1.0)
        } else if log {
            (lo / 1.6, hi * 1.6)
        } else {
            let pad = ((hi - lo) * 0.08).max(1e-3);
            (lo - pad, hi + pad)
        }
    };
    let (x0, x1) = range(&|p| p.x);
    let (y0, y1) = range(&|p| p.y);
    let mut builder = ChartBuilder::on(&root);
    let chart =
        builder.caption(title, ("sans-serif", 15)).margin(12).x_label_area_size(40).y_label_area_size(65);
    let style_of = |m: Marker| match m {
        Marker::Baseline => BLACK,
        Marker::Realized => RGBColor(33, 102, 172),
        Marker::Accumulated => RGBColor(178, 24, 43),
        Marker::Control => RGBColor(130, 130, 130),
    };
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_labels(12)
                .y_labels(12)
                .x_label_formatter(&|x| crate::common::fmt(*x))
                .y_label_formatter(&|y| crate::common::fmt(*y))
                .draw()
                .map_err(err)?;
            for p in &pts {
                let c = style_of(p.marker);
                let at = (p.x, p.y);
                match p.marker {
                    Marker::Baseline => chart
                        .draw_series(std::iter::once(
                            EmptyElement::at(at) + Rectangle::new([(-4, -4), (4, 4)], c.filled()),
                        ))
                        .map_err(err)?,
                    Marker::Accumulated => chart
                        .draw_series(std::iter::once(TriangleMarker::new(at, 6, c.filled())))
                        .map_err(err)?,
                    _ => chart.draw_series(std::iter::once(Circle::new(at, 5, c.filled()))).map_err(err)?,
                };
                if p.front {
                    chart
                        .draw_series(std::iter::once(Circle::new(at, 10, BLACK.stroke_width(1))))
                        .map_err(err)?;
                }
                chart
                    .draw_series(std::iter::once(Text::new(
                        p.label.clone(),
                        at,
                        ("sans-serif", 10).into_font().color(&c).pos(Pos::new(HPos::Left, VPos::Bottom)),
                    )))
                    .map_err(err)?;
            }
        }};
    }
    if log {
        draw!(chart.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale()).map_err(err)?);
    } else {
        draw!(chart.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?);
    }
    root.present().map_err(err)
}
