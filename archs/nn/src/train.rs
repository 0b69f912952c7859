//! Training, fine-tuning and evaluation (issue 8 §2; the reference's fine-tuning, digest §7).
//!
//! [`train`] runs SGD with momentum and weight decay, a step or cosine learning-rate schedule
//! with linear warm-up (per iteration), and cross-entropy. Fine-tuning is the same loop on a
//! network whose slots hold block ReLUs (apply the spec first, as the reference swaps its
//! `BlockRelu` modules in before training): the straight-through gradient of `mask · x` flows.
//! Checkpoints are a folder with `weights.safetensors` (PyTorch `state_dict` names) and
//! `state.json` (epochs done and their statistics), both written atomically after every epoch;
//! a run started on a folder that holds a checkpoint resumes after its last finished epoch.
//! (tch does not expose SGD's momentum buffers: they restart from zero on resume, so a resumed
//! run is not bit-identical to an uninterrupted one; the weights and schedule are.)
//! [`evaluate`] gives top-1 accuracy and mean loss; [`mean_iou`] the segmentation metric.

use crate::data::ImageSet;
use crate::error::{NnError, Result};
use crate::net::Network;
use crate::random;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{Kind, Tensor};

/// Learning-rate schedule after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between two steps.
        every: usize,
        /// Factor applied at each step.
        gamma: f64,
    },
    /// Cosine decay to 0 over the whole run.
    Cosine,
}

/// Hyper-parameters of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Learning rate after warm-up.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Whether the momentum is Nesterov's.
    pub nesterov: bool,
    /// Learning-rate schedule after warm-up.
    pub schedule: Schedule,
    /// Warm-up length in epochs (linear from 0 to `lr`).
    pub warmup_epochs: f64,
    /// Seed of the shuffling, the flips and dropout.
    pub seed: u64,
    /// Random horizontal flips of the training images.
    pub flip: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch_size: 128,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
            schedule: Schedule::Cosine,
            warmup_epochs: 0.5,
            seed: 0,
            flip: false,
        }
    }
}

impl TrainConfig {
    /// Learning rate at fractional epoch `t` (e.g. 2.5 = half-way through the third epoch).
    pub fn lr_at(&self, t: f64) -> f64 {
        if t < self.warmup_epochs {
            return self.lr * t / self.warmup_epochs;
        }
        match &self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step { every, gamma } => {
                self.lr * gamma.powi((t / (*every).max(1) as f64).floor() as i32)
            }
            Schedule::Cosine => {
                let total = self.epochs.max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * (t / total).min(1.0)).cos())
            }
        }
    }
}

/// Statistics of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Training accuracy of the epoch, in [0, 1].
    pub train_accuracy: f64,
    /// Accuracy on the evaluation set, if one was given.
    pub eval_accuracy: Option<f64>,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckpointState {
    arch: String,
    epochs_done: usize,
    history: Vec<EpochStats>,
}

const STATE_FILE: &str = "state.json";
const WEIGHTS_FILE: &str = "weights.safetensors";

/// Checks, before any step, that `network` has an output for every class of `set` (and that
/// every label is one of them): libtorch would otherwise stop the process in the loss with
/// "target out of bounds". The number of outputs is read from one forward pass of one image.
pub fn check_classes(network: &Network, set: &ImageSet) -> Result<()> {
    if set.is_empty() {
        return Ok(());
    }
    let outputs = {
        let _guard = tch::no_grad_guard();
        let (c, h, w) = set.shape;
        let x = Tensor::zeros(
            [1, c as i64, h as i64, w as i64],
            (Kind::Float, network.vs.device()),
        );
        let logits = network.net.forward_t(&x, false)?;
        logits.size().get(1).copied().unwrap_or(0)
    };
    if set.classes as i64 > outputs {
        return Err(NnError::Data(format!(
            "the data set has {} classes, {} has {outputs} outputs (build it with --classes {})",
            set.classes,
            network.net.arch(),
            set.classes
        )));
    }
    if let Some((i, l)) = set
        .labels
        .iter()
        .enumerate()
        .find(|(_, l)| !(0..outputs).contains(*l))
    {
        return Err(NnError::Data(format!(
            "image {i} has label {l}, {} has {outputs} outputs (0..{outputs})",
            network.net.arch()
        )));
    }
    Ok(())
}

/// Trains `network` on `train_set` (evaluating on `eval_set` after every epoch, if given).
/// With `checkpoint`, resumes from it and writes it after every epoch. Returns the statistics
/// of every epoch (those of a resumed run's earlier epochs included).
pub fn train(
    network: &mut Network,
    train_set: &ImageSet,
    eval_set: Option<&ImageSet>,
    config: &TrainConfig,
    checkpoint: Option<&Path>,
) -> Result<Vec<EpochStats>> {
    if train_set.is_empty() {
        return Err(NnError::Data("the training set is empty".into()));
    }
    check_classes(network, train_set)?;
    if let Some(set) = eval_set {
        check_classes(network, set)?;
    }
    if config.batch_size == 0 || config.lr <= 0.0 || !config.lr.is_finite() {
        return Err(NnError::Data(format!(
            "invalid training settings: batch size {} and learning rate {}",
            config.batch_size, config.lr
        )));
    }
    let device = network.vs.device();
    let mut state = CheckpointState {
        arch: network.net.arch().to_string(),
        ..Default::default()
    };
    if let Some(dir) = checkpoint {
        let path = dir.join(STATE_FILE);
        if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
            state = serde_json::from_str(&text)
                .map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
            if state.arch != network.net.arch() {
                return Err(NnError::Data(format!(
                    "{}: checkpoint of architecture {:?}, not {:?}",
                    path.display(),
                    state.arch,
                    network.net.arch()
                )));
            }
            network.load_weights(&dir.join(WEIGHTS_FILE))?;
            tracing::info!(
                epochs_done = state.epochs_done,
                "resuming from checkpoint {}",
                dir.display()
            );
        }
    }
    let (images, labels) = train_set.to_tensors(device)?;
    let n = train_set.len() as i64;
    let batch = config.batch_size as i64;
    let steps_per_epoch = (n + batch - 1) / batch;
    let mut opt = tch::nn::Sgd {
        momentum: config.momentum,
        dampening: 0.0,
        wd: config.weight_decay,
        nesterov: config.nesterov,
    }
    .build(&network.vs, config.lr)?;
    let bar = indicatif::ProgressBar::new(
        (config.epochs.saturating_sub(state.epochs_done) as u64) * steps_per_epoch as u64,
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(format!("train {}", network.net.arch()));
    for epoch in state.epochs_done..config.epochs {
        let start = Instant::now();
        // The order, the flips and the network's dropout draw from generators seeded by (seed,
        // epoch): a resumed run repeats the epochs it would have run, and runs in parallel
        // threads do not share tch's global generator.
        let mut rng = random::seeded(config.seed.wrapping_mul(1000).wrapping_add(epoch as u64));
        network.net.parts().seed(rng.random());
        let order = random::randperm(&mut rng, n, device);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0i64);
        for step in 0..steps_per_epoch {
            let idx = order.narrow(0, step * batch, batch.min(n - step * batch));
            let mut x = images.index_select(0, &idx);
            if config.flip {
                let coin = random::uniform(
                    &mut rng,
                    &[idx.size()[0], 1, 1, 1],
                    0.0,
                    1.0,
                    (Kind::Float, device),
                );
                let flip = coin.lt(0.5);
                x = x.flip([3]).where_self(&flip, &x);
            }
            let y = labels.index_select(0, &idx);
            opt.set_lr(config.lr_at(epoch as f64 + step as f64 / steps_per_epoch as f64));
            let logits = network.net.forward_t(&x, true)?;
            let loss = logits.cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            let b = idx.size()[0];
            loss_sum += loss.double_value(&[]) * b as f64;
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[]);
            seen += b;
            bar.inc(1);
            bar.set_message(format!(
                "epoch {}/{} loss {:.4} acc {:.2}%",
                epoch + 1,
                config.epochs,
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64
            ));
        }
        let eval_accuracy = match eval_set {
            Some(set) => Some(evaluate(network, set, 512)?.accuracy),
            None => None,
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            eval_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        };
        tracing::info!(?stats, "epoch finished");
        state.history.push(stats);
        state.epochs_done = epoch + 1;
        if let Some(dir) = checkpoint {
            network.save_weights(&dir.join(WEIGHTS_FILE))?;
            let text = serde_json::to_string_pretty(&state).expect("state serialises");
            knapsec_core::fsutil::write_atomic(&dir.join(STATE_FILE), text.as_bytes())?;
        }
    }
    bar.finish_and_clear();
    Ok(state.history)
}

/// Result of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    /// Images evaluated.
    pub count: usize,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Predicted label of every image, in order.
    pub predictions: Vec<i64>,
}

/// Top-1 accuracy and mean cross-entropy of a classification network (evaluation mode).
pub fn evaluate(network: &Network, set: &ImageSet, batch_size: usize) -> Result<EvalStats> {
    if set.is_empty() {
        return Err(NnError::Data("the evaluation set is empty".into()));
    }
    check_classes(network, set)?;
    let _guard = tch::no_grad_guard();
    let device = network.vs.device();
    let (images, labels) = set.to_tensors(device)?;
    let n = set.len() as i64;
    let batch = batch_size.max(1) as i64;
    let (mut loss_sum, mut correct) = (0.0, 0i64);
    let mut predictions = Vec::with_capacity(set.len());
    for start in (0..n).step_by(batch as usize) {
        let len = batch.min(n - start);
        let x = images.narrow(0, start, len);
        let y = labels.narrow(0, start, len);
        let logits = network.net.forward_t(&x, false)?;
        if logits.dim() != 2 {
            return Err(NnError::Data(format!(
                "{} produces {}-D outputs: top-1 evaluation needs a classifier (use mean_iou for segmentation)",
                network.net.arch(),
                logits.dim()
            )));
        }
        loss_sum += logits.cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
        let pred = logits.argmax(-1, false);
        correct += pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
        predictions.extend(Vec::<i64>::try_from(pred).map_err(NnError::Torch)?);
    }
    Ok(EvalStats {
        count: set.len(),
        accuracy: correct as f64 / n as f64,
        loss: loss_sum / n as f64,
        predictions,
    })
}

/// Per-class intersection and union pixel counts, accumulated over a data set (mmseg's
/// `IoUMetric`: mIoU is the mean over the classes whose union is not empty).
#[derive(Clone, Debug, PartialEq)]
pub struct IouCounts {
    /// Pixels of each class both labelled and predicted.
    pub intersection: Vec<u64>,
    /// Pixels of each class labelled or predicted.
    pub union: Vec<u64>,
    /// Pixels not ignored, and those predicted right.
    pub valid: u64,
    /// See `valid`.
    pub correct: u64,
}

impl IouCounts {
    /// Zero counts for `classes` classes.
    pub fn new(classes: usize) -> Self {
        IouCounts {
            intersection: vec![0; classes],
            union: vec![0; classes],
            valid: 0,
            correct: 0,
        }
    }

    /// Adds predicted and true label maps of the same shape (i64); `ignore` pixels are skipped.
    pub fn add(&mut self, pred: &Tensor, target: &Tensor, ignore: i64) {
        let valid = target.ne(ignore);
        self.valid += valid.sum(Kind::Int64).int64_value(&[]) as u64;
        self.correct += pred
            .eq_tensor(target)
            .logical_and(&valid)
            .sum(Kind::Int64)
            .int64_value(&[]) as u64;
        for c in 0..self.intersection.len() {
            let p = pred.eq(c as i64).logical_and(&valid);
            let t = target.eq(c as i64).logical_and(&valid);
            self.intersection[c] += p.logical_and(&t).sum(Kind::Int64).int64_value(&[]) as u64;
            self.union[c] += p.logical_or(&t).sum(Kind::Int64).int64_value(&[]) as u64;
        }
    }

    /// Mean IoU over the classes that occur (0 when none does).
    pub fn miou(&self) -> f64 {
        let (sum, present) = self
            .intersection
            .iter()
            .zip(&self.union)
            .filter(|(_, u)| **u > 0)
            .fold((0.0, 0usize), |(s, n), (i, u)| {
                (s + *i as f64 / *u as f64, n + 1)
            });
        if present == 0 {
            0.0
        } else {
            sum / present as f64
        }
    }

    /// Fraction of the valid pixels predicted right.
    pub fn pixel_accuracy(&self) -> f64 {
        if self.valid == 0 {
            0.0
        } else {
            self.correct as f64 / self.valid as f64
        }
    }
}

/// Mean intersection over union of predicted and true label maps (`[N, H, W]` i64), over the
/// classes that occur in either; pixels labelled `ignore` (e.g. 255) are skipped.
pub fn mean_iou(pred: &Tensor, target: &Tensor, classes: i64, ignore: i64) -> f64 {
    let mut counts = IouCounts::new(classes.max(0) as usize);
    counts.add(pred, target, ignore);
    counts.miou()
}

/// Segmentation figures of [`evaluate_segmentation`].
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentationStats {
    /// Images evaluated.
    pub count: usize,
    /// Mean intersection over union (classes with a non-empty union).
    pub miou: f64,
    /// Pixels predicted right among those not ignored.
    pub pixel_accuracy: f64,
    /// The counts behind both.
    pub counts: IouCounts,
}

/// mIoU of a segmentation network (output `[N, classes, h, w]`, upsampled bilinearly to the
/// label maps' size before the argmax) over `set`, `batch_size` images per pass.
pub fn evaluate_segmentation(
    network: &Network,
    set: &crate::data::segmentation::SegmentationSet,
    batch_size: usize,
) -> Result<SegmentationStats> {
    if set.is_empty() {
        return Err(NnError::Data("the evaluation set is empty".into()));
    }
    let _guard = tch::no_grad_guard();
    let device = network.vs.device();
    let mut counts: Option<IouCounts> = None;
    let batch = batch_size.max(1);
    for start in (0..set.len()).step_by(batch) {
        let end = (start + batch).min(set.len());
        let (x, y) = set.tensors(start..end);
        let logits = network.net.forward_t(&x.to_device(device), false)?;
        if logits.dim() != 4 {
            return Err(NnError::Data(format!(
                "{} produces {}-D outputs: mIoU needs a segmentation network",
                network.net.arch(),
                logits.dim()
            )));
        }
        let classes = logits.size()[1] as usize;
        let up = logits.upsample_bilinear2d(
            [set.height as i64, set.width as i64],
            false,
            None::<f64>,
            None::<f64>,
        );
        let pred = up.argmax(1, false).to_device(tch::Device::Cpu);
        counts.get_or_insert_with(|| IouCounts::new(classes)).add(
            &pred,
            &y,
            i64::from(crate::data::segmentation::IGNORE_LABEL),
        );
    }
    let counts = counts.expect("at least one batch");
    Ok(SegmentationStats {
        count: set.len(),
        miou: counts.miou(),
        pixel_accuracy: counts.pixel_accuracy(),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = TrainConfig {
            epochs: 10,
            lr: 0.1,
            warmup_epochs: 1.0,
            ..Default::default()
        };
        assert_eq!(c.lr_at(0.0), 0.0);
        assert!((c.lr_at(0.5) - 0.05).abs() < 1e-12);
        assert!((c.lr_at(5.0) - 0.05).abs() < 1e-12);
        assert!(c.lr_at(10.0).abs() < 1e-12);
        let s = TrainConfig {
            schedule: Schedule::Step {
                every: 3,
                gamma: 0.1,
            },
            warmup_epochs: 0.0,
            lr: 1.0,
            ..c
        };
        assert!((s.lr_at(3.5) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn miou_counts_present_classes_and_ignores() {
        let pred = Tensor::from_slice(&[0i64, 1, 1, 2]).reshape([1, 2, 2]);
        let target = Tensor::from_slice(&[0i64, 1, 2, 255]).reshape([1, 2, 2]);
        // class 0: 1/1, class 1: 1/2 (pred 1 at a class-2 pixel), class 2: 0/1.
        assert!((mean_iou(&pred, &target, 3, 255) - (1.0 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        // Counts accumulate over batches: the same maps split in two give the same figures.
        let pred = Tensor::cat(&[&pred, &pred.flip([2])], 0);
        let target = Tensor::cat(&[&target, &target], 0);
        let mut split = IouCounts::new(3);
        split.add(&pred.narrow(0, 0, 1), &target.narrow(0, 0, 1), 255);
        split.add(&pred.narrow(0, 1, 1), &target.narrow(0, 1, 1), 255);
        let mut whole = IouCounts::new(3);
        whole.add(&pred, &target, 255);
        assert_eq!(split, whole);
        // 6 valid pixels; right: 0, 1 in the first map, 1 ([0,1] flipped to [1,0]: pixel 0 is
        // 1 vs 0, pixel 1 is 0 vs 1; row 2: [2,1] vs [2,255]: pixel 2 right) in the second.
        assert_eq!((whole.valid, whole.correct), (6, 3));
        assert!((whole.pixel_accuracy() - 0.5).abs() < 1e-12);
    }

    /// The toy network has 3 outputs; a data set of 5 classes made libtorch panic with
    /// "target out of bounds" in the first step.
    #[test]
    fn more_classes_than_outputs_is_an_error_before_training() {
        let mut network = crate::distortion::tests::toy_network();
        let set = crate::data::random_set(8, (1, 8, 8), 5, 1);
        let config = TrainConfig {
            epochs: 1,
            batch_size: 4,
            ..Default::default()
        };
        let e = train(&mut network, &set, None, &config, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("5 classes") && e.contains("3 outputs"), "{e}");
        let e = evaluate(&network, &set, 4).unwrap_err().to_string();
        assert!(e.contains("5 classes") && e.contains("3 outputs"), "{e}");
    }
}
