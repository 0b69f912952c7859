//! PNG plots of the pipeline report (issue 8 §3): accuracy against the DReLU budget (knapsack
//! against `uniform`, with the baseline), and the DReLUs kept per layer at each budget.
//! Drawn with plotters' bitmap backend; text uses the DejaVu Sans font embedded in the binary.

use super::report::Report;
use anyhow::{Context as _, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font always parses; if it did not, plotting reports a clear error later.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Writes a PNG to a temporary file, then renames it (no half-written plot).
fn atomically(path: &Path, draw: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    register_font();
    let tmp = path.with_extension("tmp.png");
    draw(&tmp).with_context(|| format!("cannot draw {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Top-1 accuracy (%) against the DReLU budget (% of the original network), one line per
/// strategy, the baseline as a horizontal line.
pub fn accuracy_vs_budget(report: &Report, path: &Path) -> anyhow::Result<()> {
    let series = report.accuracy_series();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .chain([report.baseline.accuracy * 100.0])
        .collect();
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let max_budget = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: top-1 accuracy against DReLU budget", report.arch),
                (FONT, 22),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                0.0..max_budget * 1.08,
                (lo - 2.0).max(0.0)..(hi + 1.0).min(100.5),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("DReLUs kept (% of the original network)")
            .y_desc("top-1 accuracy (%)")
            .label_style((FONT, 14))
            .draw()
            .map_err(err)?;
        let base = report.baseline.accuracy * 100.0;
        chart
            .draw_series(LineSeries::new(
                [(0.0, base), (max_budget * 1.08, base)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("baseline {base:.2}% (100% DReLUs)"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
            RGBColor(148, 103, 189),
        ];
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .label_font((FONT, 14))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    })
}

/// DReLUs kept per layer (log scale), one line per budget of the knapsack strategy, and the
/// original network's DReLUs.
pub fn drelus_per_layer(report: &Report, path: &Path) -> anyhow::Result<()> {
    let layers = &report.layers;
    if layers.is_empty() {
        return Ok(());
    }
    let runs = report.knapsack_runs();
    let max = layers.iter().map(|l| l.drelus as f64).fold(1.0, f64::max);
    atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, (1000, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let n = layers.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: DReLUs kept per layer (knapsack)", report.arch),
                (FONT, 22),
            )
            .margin(16)
            .x_label_area_size(90)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), (0.5f64..max * 2.0).log_scale())
            .map_err(err)?;
        let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_style((FONT, 11).into_font().transform(FontTransform::Rotate90))
            .y_desc("DReLUs (log scale)")
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i as f64, l.drelus as f64)),
                BLACK.stroke_width(2),
            ))
            .map_err(err)?
            .label("original network")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        for (k, (label, kept)) in runs.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    kept.iter()
                        .enumerate()
                        .map(|(i, &d)| (i as f64, (d as f64).max(0.6))),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .label_font((FONT, 13))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    })
}
