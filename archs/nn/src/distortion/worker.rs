//! A distortion worker (digest §2.3): one thread with its own copy of the network, measuring
//! the cells of one work unit (a range of channels of one layer, every candidate) under either
//! schedule of [`super::engine`]: the reference's one variant per pass, or the engine's
//! (variant, image) rows stacked along the batch with exact copies skipped image by image.

use super::engine::{CleanBatch, Schedule};
use super::metric::DistortionMetric;
use super::store::WorkUnit;
use crate::block_relu::BlockRelu;
use crate::error::{NnError, Result};
use crate::net::{BlockNet, ChannelChange};
use crate::slots::SlotId;
use knapsec_core::BlockSize;
use tch::{Kind, Tensor};

/// What a worker needs to know about one layer.
#[derive(Clone, Debug)]
pub(super) struct LayerJob {
    /// The layer's name.
    pub(super) name: String,
    /// Its slot.
    pub(super) slot: SlotId,
    /// The block the slot lives in.
    pub(super) block: usize,
    /// Its activation map.
    pub(super) height: u32,
    pub(super) width: u32,
    /// The table's candidates (columns).
    pub(super) candidates: Vec<BlockSize>,
}

/// The output of a block ReLU with candidate `b` on `x` (`[N, c, H, W]`, every channel the same
/// candidate) — the same module the networks use.
fn apply_candidate(b: BlockSize, x: &Tensor) -> Result<Tensor> {
    Ok(match b {
        BlockSize::Identity => x.shallow_clone(),
        BlockSize::Zero => x.zeros_like(),
        BlockSize::Patch { .. } => {
            BlockRelu::new(vec![b; x.size()[1] as usize])?.forward_unchecked(x)
        }
    })
}

/// A hash of a row of values under which values that compare equal (`==`; `0.0` and `-0.0`)
/// hash equally.
fn row_hash(row: &[f64]) -> u64 {
    row.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &v| {
        let bits = if v == 0.0 { 0 } else { v.to_bits() };
        (h.rotate_left(5) ^ bits).wrapping_mul(0x517c_c1b7_2722_0a95)
    })
}

/// One worker thread's network and view of the clean activations.
pub(super) struct Worker<'a> {
    pub(super) net: &'a mut dyn BlockNet,
    pub(super) clean: &'a [CleanBatch],
    pub(super) metric: &'a dyn DistortionMetric,
    pub(super) schedule: Schedule,
    /// Images in the whole sample (the divisor of every value).
    pub(super) images: f64,
}

/// What a worker found for one work unit.
pub(super) struct UnitResult {
    /// The unit's id.
    pub(super) unit: usize,
    /// Values of the unit's cells, channel-major (`channel · K + candidate`).
    pub(super) values: Vec<f64>,
    /// Variants run through the network on at least one image.
    pub(super) evaluated: u64,
    /// (variant, image) rows run through the network, and all rows of the unit.
    pub(super) rows_run: u64,
    pub(super) rows_total: u64,
    /// Forward passes.
    pub(super) passes: u64,
}

impl Worker<'_> {
    /// Measures every cell of `unit` (a range of channels of `job`'s layer) under the
    /// worker's schedule.
    pub(super) fn run_unit(&mut self, unit: &WorkUnit, job: &LayerJob) -> Result<UnitResult> {
        let _guard = tch::no_grad_guard();
        match self.schedule {
            Schedule::Single => self.single(unit, job),
            Schedule::Batched {
                pass_pixels,
                max_variants,
                dedupe,
            } => self.batched(unit, job, pass_pixels, max_variants, dedupe),
        }
    }

    /// The reference's schedule: swap the slot, run from the block, restore.
    fn single(&mut self, unit: &WorkUnit, job: &LayerJob) -> Result<UnitResult> {
        let k = job.candidates.len();
        let mut values = vec![0.0; unit.channels.len() * k];
        let saved = self.net.slots().current_blocks(&job.name)?.ok_or_else(|| {
            NnError::Distortion(format!(
                "layer {:?}: the single schedule needs a ReLU slot (it is ReLU6)",
                job.name
            ))
        })?;
        let mut passes = 0;
        for (i, c) in unit.channels.clone().enumerate() {
            for (q, &b) in job.candidates.iter().enumerate() {
                let mut blocks = saved.clone();
                blocks[c] = b;
                self.net.slots_mut().set_blocks(&job.name, &blocks)?;
                let mut sum = 0.0;
                let result = (|| -> Result<()> {
                    for cb in self.clean {
                        let out = self
                            .net
                            .forward_from(job.block, &cb.inputs[job.block], false)?;
                        sum +=
                            f64::try_from(self.metric.per_image(&out, &cb.out).sum(Kind::Double))?;
                        passes += 1;
                    }
                    Ok(())
                })();
                self.net.slots_mut().set_blocks(&job.name, &saved)?;
                result?;
                values[i * k + q] = sum / self.images;
            }
        }
        let evaluated = values.len() as u64;
        let rows: u64 = self.clean.iter().map(|cb| cb.rows as u64).sum();
        Ok(UnitResult {
            unit: unit.id,
            values,
            evaluated,
            rows_run: evaluated * rows,
            rows_total: evaluated * rows,
            passes,
        })
    }

    /// Every candidate's output of the unit's channels on every batch (`outs[q][batch]`,
    /// `[N, cc, H, W]`), and the clean slot output of those channels (`clean[batch]`).
    fn candidate_outputs(
        &self,
        unit: &WorkUnit,
        job: &LayerJob,
    ) -> Result<(Vec<Vec<Tensor>>, Vec<Tensor>)> {
        let cc = unit.channels.len() as i64;
        let narrow = |t: &Tensor| t.narrow(1, unit.channels.start as i64, cc);
        let mut clean = Vec::with_capacity(self.clean.len());
        let mut outs: Vec<Vec<Tensor>> = job.candidates.iter().map(|_| Vec::new()).collect();
        for cb in self.clean {
            let pre_all = &cb.pre[job.slot.0];
            clean.push(narrow(&self.net.slots().run(job.slot, pre_all)));
            let pre = narrow(pre_all);
            for (out, &b) in outs.iter_mut().zip(&job.candidates) {
                out.push(apply_candidate(b, &pre)?);
            }
        }
        Ok((outs, clean))
    }

    /// Which (variant, image) rows must run, and which copy another: for batch `b`,
    /// `reps[b][(i·K + q)·N + r]` is `None` when candidate `q` of the unit's channel `i` gives
    /// the clean output on image `r` (distortion exactly 0), and `Some(q')` when it gives the
    /// output of candidate `q'` (`q' = q`: the row runs; `q' < q`: it copies that row).
    ///
    /// Rows are compared image by image, value by value (`==`: `0.0` and `-0.0` agree, NaN
    /// never does): a channel output equal, on one image, to the clean one or to an earlier
    /// candidate's gives that image an equal network output, so the copies are exact, and a
    /// variant that differs on some images only runs on those. Candidates are matched by a
    /// hash of their rows, confirmed by comparing the values.
    fn representatives(
        &self,
        unit: &WorkUnit,
        job: &LayerJob,
        outs: &[Vec<Tensor>],
        clean: &[Tensor],
        dedupe: bool,
    ) -> Result<Vec<Vec<Option<usize>>>> {
        let (cc, k) = (unit.channels.len(), job.candidates.len());
        let mut all = Vec::with_capacity(self.clean.len());
        for (b, cb) in self.clean.iter().enumerate() {
            let n = cb.rows as usize;
            let mut reps: Vec<Option<usize>> = (0..cc * k * n).map(|x| Some(x / n % k)).collect();
            if !dedupe {
                all.push(reps);
                continue;
            }
            let values = |t: &Tensor| -> Result<Vec<f64>> {
                Ok(Vec::<f64>::try_from(
                    t.to_kind(Kind::Double).contiguous().view([-1]),
                )?)
            };
            let clean_values = values(&clean[b])?;
            let hw = clean_values.len() / (n * cc).max(1);
            let out_values: Vec<Vec<f64>> =
                outs.iter().map(|o| values(&o[b])).collect::<Result<_>>()?;
            // Per (image, channel): the candidates seen so far that stand for themselves, by
            // hash; an equal hash is confirmed by comparing the values.
            let mut seen: Vec<(u64, usize)> = Vec::with_capacity(k);
            for r in 0..n {
                for i in 0..cc {
                    let at = (r * cc + i) * hw..(r * cc + i + 1) * hw;
                    let clean_row = &clean_values[at.clone()];
                    seen.clear();
                    for (q, ov) in out_values.iter().enumerate() {
                        let row = &ov[at.clone()];
                        let rep = &mut reps[(i * k + q) * n + r];
                        if row == clean_row {
                            *rep = None;
                            continue;
                        }
                        let h = row_hash(row);
                        match seen
                            .iter()
                            .find(|&&(h2, q2)| h2 == h && out_values[q2][at.clone()] == *row)
                        {
                            Some(&(_, q2)) => *rep = Some(q2),
                            None => seen.push((h, q)),
                        }
                    }
                }
            }
            all.push(reps);
        }
        Ok(all)
    }

    fn batched(
        &mut self,
        unit: &WorkUnit,
        job: &LayerJob,
        pass_pixels: usize,
        max_variants: usize,
        dedupe: bool,
    ) -> Result<UnitResult> {
        let (cc, k) = (unit.channels.len(), job.candidates.len());
        let (outs, clean) = self.candidate_outputs(unit, job)?;
        let reps = self.representatives(unit, job, &outs, &clean, dedupe)?;
        let pixels = job.height as usize * job.width as usize;
        let mut values = vec![0.0; cc * k];
        let mut run_variant = vec![false; cc * k];
        let (mut passes, mut rows_run, mut rows_total) = (0, 0u64, 0u64);
        for (b, cb) in self.clean.iter().enumerate() {
            let n = cb.rows as usize;
            let reps = &reps[b];
            // The rows to run: (channel i, candidate q, image r), variant-major.
            let todo: Vec<(usize, usize, usize)> = (0..cc * k * n)
                .filter(|&x| reps[x] == Some(x / n % k))
                .map(|x| (x / n / k, x / n % k, x % n))
                .collect();
            let per_pass = (pass_pixels / pixels.max(1)).clamp(1, (max_variants * n).max(1));
            let pre = &cb.pre[job.slot.0];
            let act = self.net.slots().run(job.slot, pre);
            let mut cache = Vec::new();
            let mut measured = vec![0.0f64; cc * k * n];
            for group in todo.chunks(per_pass) {
                let image_of_row: Vec<i64> = group.iter().map(|&(_, _, r)| r as i64).collect();
                let channel_of_row: Vec<i64> = group
                    .iter()
                    .map(|&(i, _, _)| (unit.channels.start + i) as i64)
                    .collect();
                let replaced: Vec<Tensor> = group
                    .iter()
                    .map(|&(i, q, r)| outs[q][b].narrow(0, r as i64, 1).narrow(1, i as i64, 1))
                    .collect();
                let rows = Tensor::from_slice(&image_of_row).to_device(pre.device());
                let change = ChannelChange {
                    clean: &act,
                    images: &rows,
                    channels: &channel_of_row,
                    values: &Tensor::cat(&replaced, 0),
                };
                let input = cb.inputs[job.block].index_select(0, &rows);
                let y = self.net.forward_after_channel_change(
                    job.block, job.slot, &change, &input, &mut cache,
                )?;
                let d = Vec::<f64>::try_from(
                    self.metric.per_image(&y, &cb.out.index_select(0, &rows)),
                )?;
                for (&(i, q, r), v) in group.iter().zip(d) {
                    measured[(i * k + q) * n + r] = v;
                    run_variant[i * k + q] = true;
                }
                passes += 1;
            }
            for (x, rep) in reps.iter().enumerate() {
                let (v, r) = (x / n, x % n);
                if let Some(q2) = rep {
                    values[v] += measured[(v / k * k + q2) * n + r];
                }
            }
            rows_run += todo.len() as u64;
            rows_total += (cc * k * n) as u64;
        }
        for v in &mut values {
            *v /= self.images;
        }
        Ok(UnitResult {
            unit: unit.id,
            values,
            evaluated: run_variant.iter().filter(|r| **r).count() as u64,
            rows_run,
            rows_total,
            passes,
        })
    }
}
