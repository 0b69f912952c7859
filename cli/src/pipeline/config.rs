//! The pipeline configuration (`knapsec pipeline --config pipeline.ron`), documented field by
//! field; every field has a default, so `()` is a valid (demo-sized) configuration.

use knapsec_core::ArchOptions;
use serde::{Deserialize, Serialize};

/// Training settings of one stage (baseline training or fine-tuning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub weight_decay: f64,
    /// `cosine`, `constant` or `step:EVERY:GAMMA`.
    pub schedule: String,
    pub warmup: f64,
    /// Train on the first N training images only.
    pub train_subset: Option<usize>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            epochs: 3,
            lr: 0.05,
            batch: 128,
            weight_decay: 5e-4,
            schedule: "cosine".into(),
            warmup: 0.3,
            train_subset: None,
        }
    }
}

/// How to get the baseline network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Baseline {
    /// Train it (stage skipped when its weights exist).
    Train(TrainSettings),
    /// Use these weights (.safetensors, PyTorch state_dict names).
    Load(String),
    /// Use the weights an imported network carries (`arch: "onnx:PATH"`: the file's
    /// initializers), saved as the baseline's weights file.
    Imported,
}

/// Distortion extraction settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistortionSettings {
    /// Images in the sample.
    pub samples: usize,
    /// Images per pass.
    pub batch: usize,
    pub seed: u64,
}

impl Default for DistortionSettings {
    fn default() -> Self {
        DistortionSettings {
            samples: 16,
            batch: 8,
            seed: 0,
        }
    }
}

/// Secure inference of a few test images at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecureSettings {
    /// Number of test images (0 skips the stage).
    pub images: usize,
    /// Which fine-tuned model: its budget (one of `budgets`).
    pub budget: Option<String>,
    pub backend: String,
    /// `exact`, `approx:BITS,LSB_IGNORED`, or `calibrated` (the windows of the calibration
    /// stage, which must calibrate this budget).
    pub drelu: String,
    /// Fixed-point fractional bits of the export.
    pub frac_bits: u32,
}

impl Default for SecureSettings {
    fn default() -> Self {
        SecureSettings {
            images: 3,
            budget: None,
            backend: "securenn".into(),
            drelu: "exact".into(),
            frac_bits: 12,
        }
    }
}

/// Calibration of the approximate-DReLU windows of fine-tuned models (`knapsec calibrate`),
/// and their fixed-point top-1 under exact and calibrated DReLUs side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrationSettings {
    /// Training images the windows are calibrated on (0 skips the stage).
    pub samples: usize,
    /// Budgets whose fine-tuned model (of the main strategy) is calibrated (every budget if
    /// empty).
    pub budgets: Vec<String>,
    /// As `knapsec calibrate --target-error`.
    pub target_error: f64,
    /// As `knapsec calibrate --margin-bits`.
    pub margin_bits: u32,
    /// As `knapsec calibrate --max-bits`.
    pub max_bits: u32,
    /// A window too narrow for the calibration data stops the pipeline (otherwise a warning).
    pub strict: bool,
    /// Evaluate both modes on the first N test images (default: `eval_subset`).
    pub eval_subset: Option<usize>,
    /// Fixed-point fractional bits of the export.
    pub frac_bits: u32,
}

impl Default for CalibrationSettings {
    fn default() -> Self {
        CalibrationSettings {
            samples: 0,
            budgets: Vec::new(),
            target_error: 1e-2,
            margin_bits: 2,
            max_bits: 64,
            strict: false,
            eval_subset: None,
            frac_bits: 12,
        }
    }
}

/// The whole pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Architecture (see `knapsec arch list`), or an imported network `onnx:PATH`, its path
    /// relative to the configuration file's folder ([`PipelineConfig::resolve_paths`]).
    pub arch: String,
    /// Architecture options; `()` for an imported network (its file fixes them).
    pub options: ArchOptions,
    /// Data set (`fashion-mnist`, `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`, `folder:DIR`).
    pub data: String,
    /// Evaluate on the first N test images (all if absent).
    pub eval_subset: Option<usize>,
    pub baseline: Baseline,
    pub distortion: DistortionSettings,
    /// DReLU budgets (`6%`, `0.06` or an absolute count).
    pub budgets: Vec<String>,
    /// Knapsack strategy of the main runs.
    pub strategy: String,
    /// Also run the `uniform` strategy at every budget (the ablation).
    pub compare_uniform: bool,
    pub finetune: TrainSettings,
    pub secure: SecureSettings,
    pub calibration: CalibrationSettings,
}

impl Default for PipelineConfig {
    /// The demo: Fashion-MNIST, `resnet18-cifar` at base width 16 for one 28×28 input channel
    /// and 10 classes, budgets 3 %, 6 % and 12 %.
    fn default() -> Self {
        PipelineConfig {
            arch: "resnet18-cifar".into(),
            options: ArchOptions::fashion_mnist(),
            data: "fashion-mnist".into(),
            eval_subset: None,
            baseline: Baseline::Train(TrainSettings {
                epochs: 3,
                ..TrainSettings::default()
            }),
            distortion: DistortionSettings::default(),
            budgets: vec!["3%".into(), "6%".into(), "12%".into()],
            strategy: "mckp-exact".into(),
            compare_uniform: true,
            finetune: TrainSettings {
                epochs: 1,
                lr: 0.01,
                warmup: 0.1,
                train_subset: Some(20_000),
                ..TrainSettings::default()
            },
            secure: SecureSettings {
                budget: Some("6%".into()),
                ..SecureSettings::default()
            },
            calibration: CalibrationSettings::default(),
        }
    }
}

impl PipelineConfig {
    /// Makes the path of a `PREFIX:PATH` architecture (`onnx:net.onnx`) that is relative
    /// resolve against `base`, the configuration file's folder.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some((prefix, rest)) = self.arch.split_once(':')
            && knapsec_core::registry::arch_source(&self.arch).is_some()
            && std::path::Path::new(rest).is_relative()
        {
            self.arch = format!("{prefix}:{}", base.join(rest).display());
        }
    }

    /// Checks what can be checked before running anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        let imported = knapsec_core::registry::arch_source(&self.arch).is_some();
        if imported && self.options != ArchOptions::default() {
            anyhow::bail!(
                "arch {:?}: an imported network's file fixes its input size and classes; \
                 write `options: ()` (the default options are the demo's)",
                self.arch
            );
        }
        if !imported && self.baseline == Baseline::Imported {
            anyhow::bail!(
                "baseline: Imported needs an imported network (arch \"onnx:PATH\"), not {:?}",
                self.arch
            );
        }
        if self.budgets.is_empty() {
            anyhow::bail!("the configuration lists no budgets");
        }
        if self.distortion.samples == 0 || self.distortion.batch == 0 {
            anyhow::bail!("distortion: samples and batch must be at least 1");
        }
        if let Some(b) = &self.secure.budget
            && self.secure.images > 0
            && !self.budgets.contains(b)
        {
            anyhow::bail!(
                "secure.budget {b:?} is not one of the budgets {:?}",
                self.budgets
            );
        }
        let c = &self.calibration;
        if self.secure.images > 0 && self.secure.drelu.trim() == "calibrated" {
            let budget = self.secure.budget.as_ref().unwrap_or(&self.budgets[0]);
            if c.samples == 0 || !(c.budgets.is_empty() || c.budgets.contains(budget)) {
                anyhow::bail!(
                    "secure.drelu \"calibrated\" needs the calibration stage at {budget:?} (calibration.samples > 0, {budget:?} in calibration.budgets)"
                );
            }
        }
        if c.samples > 0 {
            if let Some(b) = c.budgets.iter().find(|b| !self.budgets.contains(b)) {
                anyhow::bail!(
                    "calibration.budgets: {b:?} is not one of the budgets {:?}",
                    self.budgets
                );
            }
            if !(0.0..1.0).contains(&c.target_error) {
                anyhow::bail!(
                    "calibration.target_error {} must be in [0, 1)",
                    c.target_error
                );
            }
            if c.eval_subset == Some(0) {
                anyhow::bail!("calibration.eval_subset must be at least 1");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_demo_and_round_trips() {
        let c: PipelineConfig = ron::from_str("()").unwrap();
        assert_eq!(c, PipelineConfig::default());
        let text = ron::ser::to_string_pretty(&c, Default::default()).unwrap();
        assert_eq!(ron::from_str::<PipelineConfig>(&text).unwrap(), c);
        c.validate().unwrap();
        assert!(ron::from_str::<PipelineConfig>("(budgetz: [])").is_err());
        let bad: PipelineConfig =
            ron::from_str("(budgets: [\"6%\"], calibration: (samples: 8, budgets: [\"7%\"]))")
                .unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("\"7%\""));
    }
}
