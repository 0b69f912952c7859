//! PNG plots of the pipeline report (issue 8 §3): accuracy against the DReLU budget (knapsack
//! against `uniform`, with the baseline, and the fixed-point top-1 with exact and calibrated
//! approximate DReLUs where the calibration stage ran), and the DReLUs kept per layer at each budget.
//! Drawn with plotters' bitmap backend; text uses the DejaVu Sans font embedded in the binary.

use super::report::Report;
use anyhow::{Context as _, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};
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

/// Line colours: matplotlib's `tab10` without its yellow-green and cyan, which are faint on
/// white.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A tick label: whole numbers without a trailing `.0` and with thousands separators
/// (`10,000`), others with at most two decimals (`2.5`).
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 && v.abs() < 1e15 {
        let digits = format!("{}", v.round().abs() as u64);
        let mut out = String::new();
        for (i, d) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(d);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
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
    let calibrated = report.calibration_points();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .chain(calibrated.iter().flat_map(|p| [p.1, p.2]))
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
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
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
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
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
        if let Some(c) = report.calibration.first()
            && !calibrated.is_empty()
        {
            let (exact, cal) = (BLACK, COLORS[4]);
            chart
                .draw_series(
                    calibrated
                        .iter()
                        .map(|&(x, y, _)| Cross::new((x, y), 6, exact.stroke_width(2))),
                )
                .map_err(err)?
                .label(format!(
                    "fixed point, exact DReLU ({:.0} B/DReLU)",
                    c.compare_bytes_per_drelu_exact
                ))
                .legend(move |(x, y)| Cross::new((x + 10, y), 6, exact.stroke_width(2)));
            chart
                .draw_series(
                    calibrated
                        .iter()
                        .map(|&(x, _, y)| TriangleMarker::new((x, y), 7, cal.filled())),
                )
                .map_err(err)?
                .label(format!(
                    "fixed point, calibrated DReLU (mean k {:.1}, {:.0} B/DReLU)",
                    c.mean_bits, c.compare_bytes_per_drelu
                ))
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 7, cal.filled()));
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
/// original network's DReLUs. Layer names run downwards from their ticks (a network has tens
/// of layers: side by side, the names would overlap), and the legend stands beside the chart,
/// where it hides no line.
pub fn drelus_per_layer(report: &Report, path: &Path) -> anyhow::Result<()> {
    let layers = &report.layers;
    if layers.is_empty() {
        return Ok(());
    }
    let runs = report.knapsack_runs();
    let max = layers.iter().map(|l| l.drelus as f64).fold(1.0, f64::max);
    let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
    // Room under the axis for the longest name written downwards (DejaVu Sans at 12 px is
    // under 6 px a character on average).
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32;
    let label_area = 20 + longest * 6;
    let n = layers.len();
    // Thin the names only when even downward ones would collide (more than ~60 layers).
    let every = n.div_ceil(60).max(1);
    atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, (1100, 560 + label_area)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot_area, legend_area) = root.split_horizontally(880);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(
                format!("{}: DReLUs kept per layer (knapsack)", report.arch),
                (FONT, 22),
            )
            .margin(16)
            .x_label_area_size(label_area)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), (0.5f64..max * 2.0).log_scale())
            .map_err(err)?;
        // The mesh draws the ticks and grid; the names are drawn below, since the mesh centres
        // rotated labels on their tick instead of hanging them from the axis.
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .x_labels(n)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|v| tick(*v))
            .y_desc("DReLUs (log scale)")
            .draw()
            .map_err(err)?;
        // Rotated a quarter turn clockwise, anchored at the start of the text: each name runs
        // downwards from just under its tick.
        let downwards = TextStyle::from((FONT, 12).into_font().transform(FontTransform::Rotate90))
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (i, name) in names.iter().enumerate().step_by(every) {
            let (x, y) = chart.backend_coord(&(i as f64, 0.5));
            plot_area
                .draw(&Text::new(name.clone(), (x, y + 8), downwards.clone()))
                .map_err(err)?;
        }
        let mut legend: Vec<(String, RGBAColor)> = Vec::new();
        chart
            .draw_series(LineSeries::new(
                layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i as f64, l.drelus as f64)),
                BLACK.stroke_width(2),
            ))
            .map_err(err)?;
        legend.push(("original network".into(), BLACK.to_rgba()));
        for (k, (label, kept)) in runs.iter().enumerate() {
            let color = COLORS[k % COLORS.len()].to_rgba();
            chart
                .draw_series(LineSeries::new(
                    kept.iter()
                        .enumerate()
                        .map(|(i, &d)| (i as f64, (d as f64).max(0.6))),
                    color.stroke_width(2),
                ))
                .map_err(err)?;
            legend.push((label.clone(), color));
        }
        let font = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, (label, color)) in legend.iter().enumerate() {
            let y = 60 + 22 * i as i32;
            legend_area
                .draw(&PathElement::new([(4, y), (28, y)], color.stroke_width(2)))
                .map_err(err)?;
            legend_area
                .draw(&Text::new(label.clone(), (34, y), font.clone()))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed experiment's report (docs/experiments), drawn by these tests.
    fn experiment() -> (std::path::PathBuf, Report) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/experiments/fashion-mnist-resnet18");
        let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
        (dir, serde_json::from_str(&text).unwrap())
    }

    /// Width and height of a PNG, from its IHDR chunk.
    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn tick_labels_have_no_trailing_zero() {
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(10000.0), "10,000");
        assert_eq!(tick(1_000_000.0), "1,000,000");
        assert_eq!(tick(100.0), "100");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(92.0), "92");
        assert_eq!(tick(-3.0), "-3");
    }

    #[test]
    fn the_committed_experiment_plots() {
        let (_, report) = experiment();
        let out = tempfile::tempdir().unwrap();
        let (acc, per_layer) = (out.path().join("a.png"), out.path().join("d.png"));
        accuracy_vs_budget(&report, &acc).unwrap();
        drelus_per_layer(&report, &per_layer).unwrap();
        assert_eq!(png_size(&acc), (900, 560));
        // 17 layers, the longest name 10 characters: the label area grows with it.
        let longest = report.layers.iter().map(|l| l.name.len()).max().unwrap() as u32;
        assert_eq!(png_size(&per_layer), (1100, 560 + 20 + 6 * longest));
        // No temporary file is left beside the plots.
        let names: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// Redraws the committed experiment's plots from its `report.json` (after a change to this
    /// module): `./setup.sh cargo test -p knapsec-cli --bin knapsec -- --ignored redraw`.
    #[test]
    #[ignore = "writes into docs/experiments; run by hand after changing the plots"]
    fn redraw_committed_experiment_plots() {
        let (dir, report) = experiment();
        accuracy_vs_budget(&report, &dir.join("accuracy.png")).unwrap();
        drelus_per_layer(&report, &dir.join("drelus_per_layer.png")).unwrap();
    }
}
