//! SVG plots (plotters' SVG backend: no system libraries, no font files).

use std::path::Path;

use plotters::prelude::*;

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
