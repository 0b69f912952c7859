//! The pipeline report (issue 8 §3): one JSON file a script can read and a table a person can
//! read at a glance, plus the data behind the plots.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The baseline network.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BaselineReport {
    pub weights: String,
    /// Top-1 accuracy in [0, 1] on the evaluation set.
    pub accuracy: f64,
    pub drelus: u64,
    pub train_seconds: Option<f64>,
}

/// One (budget, strategy) run: knapsack spec, fine-tuning, evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// The budget as given (`6%`).
    pub budget: String,
    pub strategy: String,
    pub spec: String,
    /// DReLUs of the spec and their share of the original network's.
    pub drelus: u64,
    pub drelus_ratio: f64,
    /// Summed distortion of the spec (knapsack objective), where the strategy reports it.
    pub distortion: Option<f64>,
    /// Accuracy with the block ReLUs in place, before and after fine-tuning.
    pub accuracy_before_finetune: f64,
    pub accuracy: f64,
    /// `accuracy / baseline accuracy`.
    pub relative_accuracy: f64,
    pub finetune_seconds: Option<f64>,
    /// DReLUs kept per layer (layer-table order).
    pub drelus_per_layer: Vec<u64>,
}

/// Secure inference of a few test images with one of the fine-tuned models.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SecureReport {
    pub budget: String,
    pub strategy: String,
    pub backend: String,
    pub drelu: String,
    pub images: usize,
    pub true_labels: Vec<i64>,
    pub secure_labels: Vec<i64>,
    pub plain_labels: Vec<i64>,
    /// Secure labels equal the plaintext (fixed-point) labels on every image.
    pub labels_agree: bool,
    pub bytes_per_image: f64,
    pub rounds_per_image: f64,
    pub online_seconds_per_image: f64,
    pub offline_seconds_per_image: f64,
}

/// One fine-tuned model calibrated (`knapsec calibrate`) and evaluated in fixed point under
/// exact and calibrated DReLUs (the plain oracle emulates the windows bit for bit).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub budget: String,
    pub strategy: String,
    /// Training images the windows were calibrated on.
    pub samples: usize,
    /// Test images both modes were evaluated on.
    pub eval_images: usize,
    /// Fixed-point top-1 in [0, 1] with exact DReLUs and with the calibrated windows.
    pub exact_top1: f64,
    pub calibrated_top1: f64,
    /// Fraction of test images whose calibrated label equals the exact one.
    pub agree_exact: f64,
    /// Mean window bits k over the DReLU sites, and weighted by their DReLUs.
    pub mean_bits: f64,
    pub mean_bits_per_drelu: f64,
    /// Comparison bytes per DReLU (securenn: `3(k−1) + 8`), exact and calibrated.
    pub compare_bytes_per_drelu_exact: f64,
    pub compare_bytes_per_drelu: f64,
    /// Closed-form bytes of one secure inference (securenn, offline + online).
    pub inference_bytes_exact: u64,
    pub inference_bytes: u64,
    /// Sites whose window a cap made too narrow for the calibration data.
    pub warnings: Vec<String>,
}

/// A ReLU layer of the architecture.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    pub name: String,
    pub drelus: u64,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub arch: String,
    pub data: String,
    pub eval_images: usize,
    pub baseline: BaselineReport,
    pub distortion_seconds: Option<f64>,
    pub runs: Vec<RunReport>,
    pub secure: Option<SecureReport>,
    /// Calibrated approximate-DReLU windows, per calibrated budget.
    #[serde(default)]
    pub calibration: Vec<CalibrationReport>,
    pub layers: Vec<LayerInfo>,
    /// Wall time of each stage run in this invocation (skipped stages are absent).
    pub stage_seconds: Vec<(String, f64)>,
    pub total_seconds: f64,
}

impl Report {
    /// `(strategy, [(DReLU %, accuracy %)])`, points sorted by budget.
    pub fn accuracy_series(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for r in &self.runs {
            let p = (r.drelus_ratio * 100.0, r.accuracy * 100.0);
            match out.iter_mut().find(|(s, _)| *s == r.strategy) {
                Some((_, pts)) => pts.push(p),
                None => out.push((r.strategy.clone(), vec![p])),
            }
        }
        for (_, pts) in &mut out {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    }

    /// Fixed-point top-1 (%) with exact and with calibrated DReLUs at each calibrated run's
    /// DReLU share (%): `(share, exact, calibrated)`, sorted by share.
    pub fn calibration_points(&self) -> Vec<(f64, f64, f64)> {
        let mut pts: Vec<(f64, f64, f64)> = self
            .calibration
            .iter()
            .filter_map(|c| {
                let run = self
                    .runs
                    .iter()
                    .find(|r| r.budget == c.budget && r.strategy == c.strategy)?;
                Some((
                    run.drelus_ratio * 100.0,
                    c.exact_top1 * 100.0,
                    c.calibrated_top1 * 100.0,
                ))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    }

    /// `(label, DReLUs per layer)` of every run that is not `uniform`.
    pub fn knapsack_runs(&self) -> Vec<(String, Vec<u64>)> {
        self.runs
            .iter()
            .filter(|r| r.strategy != "uniform")
            .map(|r| {
                (
                    format!("{} budget ({})", r.budget, r.strategy),
                    r.drelus_per_layer.clone(),
                )
            })
            .collect()
    }

    /// The table printed at the end of a run.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} on {} ({} test images)",
            self.arch, self.data, self.eval_images
        );
        let _ = writeln!(
            s,
            "  baseline: top-1 {:.2}% with {} DReLUs",
            self.baseline.accuracy * 100.0,
            self.baseline.drelus
        );
        let _ = writeln!(
            s,
            "  {:>7}  {:<12} {:>10} {:>8} {:>13} {:>9} {:>9}",
            "budget", "strategy", "DReLUs", "share", "distortion", "before", "top-1"
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "  {:>7}  {:<12} {:>10} {:>7.2}% {:>13} {:>8.2}% {:>8.2}%  ({:.1}% of baseline)",
                r.budget,
                r.strategy,
                r.drelus,
                r.drelus_ratio * 100.0,
                r.distortion
                    .map(|d| format!("{d:.4e}"))
                    .unwrap_or_else(|| "-".into()),
                r.accuracy_before_finetune * 100.0,
                r.accuracy * 100.0,
                r.relative_accuracy * 100.0
            );
        }
        if let Some(sec) = &self.secure {
            let _ = writeln!(
                s,
                "  secure inference ({} {}, {} at {}): {} images, labels {} plaintext; {:.2} MB and {:.0} rounds per image, online {:.3} s, offline {:.3} s",
                sec.backend,
                sec.drelu,
                sec.strategy,
                sec.budget,
                sec.images,
                if sec.labels_agree {
                    "equal"
                } else {
                    "DIFFER FROM"
                },
                sec.bytes_per_image / 1e6,
                sec.rounds_per_image,
                sec.online_seconds_per_image,
                sec.offline_seconds_per_image
            );
        }
        for c in &self.calibration {
            let _ = writeln!(
                s,
                "  DReLU windows calibrated on {} images ({} at {}), fixed-point top-1 on {} test images: exact {:.2}%, calibrated {:.2}% ({:.2}% of labels equal); mean k {:.2}; {:.1} vs {:.1} comparison bytes per DReLU ({:.2}x fewer); {:.2} vs {:.2} MB per secure inference",
                c.samples,
                c.strategy,
                c.budget,
                c.eval_images,
                c.exact_top1 * 100.0,
                c.calibrated_top1 * 100.0,
                c.agree_exact * 100.0,
                c.mean_bits,
                c.compare_bytes_per_drelu,
                c.compare_bytes_per_drelu_exact,
                c.compare_bytes_per_drelu_exact / c.compare_bytes_per_drelu.max(f64::MIN_POSITIVE),
                c.inference_bytes as f64 / 1e6,
                c.inference_bytes_exact as f64 / 1e6,
            );
        }
        let _ = writeln!(s, "  total {:.0} s", self.total_seconds);
        s
    }
}
