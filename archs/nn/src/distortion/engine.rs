//! The distortion engine (digest §2.3): clean activations once, then every (channel, patch)
//! variant of a layer from that layer to the output.
//!
//! Two schedules fill the same table:
//!
//! * [`Schedule::Batched`] (the engine). The clean pass records, for every image batch, the
//!   input of every block and the pre-activation input of every slot (through the slots' tap).
//!   A variant's slot output is the clean slot output with one channel replaced by the block
//!   ReLU of that channel's pre-activation. The engine works in (variant, image) rows: rows
//!   are stacked along the batch (each with its image's block input) and run from the slot to
//!   the output in one pass ([`BlockNet::run_block_after_slot`], then the later blocks). A row
//!   whose channel output is **bitwise equal, on that image,** to one already known is not run:
//!   equal to the clean output (distortion exactly 0: `(1,1)`, identity on a channel without
//!   negative inputs, any patch on a channel dead on that image) or to the output of an
//!   earlier candidate of the same channel on the same image (identity when every patch mean
//!   is positive, all zero, the same effective patch after clamping to the map, or two patch
//!   sizes whose masks agree wherever the input is non-zero). The outputs themselves are
//!   compared, so nothing is assumed about the candidates; comparing per image rather than
//!   over the whole sample skips about a third more rows on ResNet layers.
//!   Equal slot outputs give equal network outputs, so these copies are exact. Workers
//!   (threads, each with its own copy of the network and one torch thread) take work units
//!   from a shared counter.
//! * [`Schedule::Single`] (the reference's schedule, digest §2.3): one variant per pass, the
//!   layer's slot swapped for a block ReLU, each pass from the start of the layer's block, no
//!   skipping. It is the yardstick of `knapsec bench distortion` and of the tests.
//!
//! Values are the metric's per-image distortion averaged over all images of the sample.

use super::metric::DistortionMetric;
use super::store::{self, RunInfo, WorkUnit};
use super::worker::{LayerJob, UnitResult, Worker};
use crate::error::{NnError, Result};
use crate::net::BlockNet;
use crate::slots::SlotId;
use knapsec_core::distortion::DistortionTable;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// How variants are evaluated (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// The engine: passes start at the layer, variants stacked, identical variants skipped.
    Batched {
        /// Stack variants until a pass holds about this many rows·pixels at the layer's map
        /// (`V·N·H·W`); at least one variant per pass.
        pass_pixels: usize,
        /// At most this many variants per pass.
        max_variants: usize,
        /// Skip variants whose slot output equals one already known (see the module doc).
        dedupe: bool,
    },
    /// The reference's schedule: one variant per pass from the layer's block, nothing skipped.
    Single,
}

impl Schedule {
    /// The engine with its default settings.
    pub const DEFAULT: Schedule = Schedule::Batched {
        pass_pixels: 32 * 1024,
        max_variants: 64,
        dedupe: true,
    };
}

/// Settings of one extraction.
#[derive(Clone, Debug)]
pub struct ExtractConfig {
    /// How variants are evaluated.
    pub schedule: Schedule,
    /// Images per pass (the sample is cut into batches of this many).
    pub batch: usize,
    /// Torch threads per worker thread (workers = number of networks given to [`extract`]);
    /// keep workers × threads at the number of cores.
    pub threads_per_worker: usize,
    /// Write the partial table here while running (atomically), with this run information.
    pub checkpoint: Option<(PathBuf, RunInfo)>,
    /// Minimum time between two checkpoint writes (one is always written when the run stops).
    pub checkpoint_every: Duration,
    /// Stop after this many work units (an injected interruption, for tests).
    pub stop_after_units: Option<usize>,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig {
            schedule: Schedule::DEFAULT,
            batch: 8,
            threads_per_worker: 1,
            checkpoint: None,
            checkpoint_every: Duration::from_secs(2),
            stop_after_units: None,
        }
    }
}

/// Progress of a run, reported to the caller's callback on the calling thread.
#[derive(Clone, Debug)]
pub enum Progress {
    /// The run starts: `total` cells in this job, `done` of them already measured (resumed).
    Start {
        /// Cells of this job.
        total: u64,
        /// Cells already measured.
        done: u64,
    },
    /// A work unit of `cells` cells of `layer` finished.
    Unit {
        /// The layer.
        layer: String,
        /// Cells the unit filled.
        cells: u64,
    },
}

/// Counts of a finished (or interrupted) run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtractStats {
    /// Work units finished in this run.
    pub units: usize,
    /// Cells (variants) filled in this run.
    pub cells: u64,
    /// Variants run through the network on at least one image (the others were exact copies).
    pub evaluated: u64,
    /// (variant, image) rows of the cells filled, and how many of them ran through the
    /// network (the others were exact copies).
    pub image_rows: u64,
    /// See `image_rows`.
    pub image_rows_run: u64,
    /// Forward passes (a pass runs one stack of variants on one batch of images).
    pub passes: u64,
    /// Wall time of the variant phase (after the clean pass), seconds.
    pub seconds: f64,
}

/// The clean network's activations on one batch of images.
pub(super) struct CleanBatch {
    /// Input of every block (`inputs[0]` is the images).
    pub(super) inputs: Vec<Tensor>,
    /// Pre-activation input of every slot, by slot index.
    pub(super) pre: Vec<Tensor>,
    /// The network's output.
    pub(super) out: Tensor,
    /// Images in the batch.
    pub(super) rows: i64,
}

impl CleanBatch {
    fn share(&self) -> CleanBatch {
        CleanBatch {
            inputs: self.inputs.iter().map(Tensor::shallow_clone).collect(),
            pre: self.pre.iter().map(Tensor::shallow_clone).collect(),
            out: self.out.shallow_clone(),
            rows: self.rows,
        }
    }
}

/// Runs the clean network on every batch and records what the variant passes start from.
fn clean_pass(net: &dyn BlockNet, images: &Tensor, batch: usize) -> Result<Vec<CleanBatch>> {
    let _guard = tch::no_grad_guard();
    let n = images.size()[0];
    let nslots = net.slots().len();
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let rows = (batch as i64).min(n - start);
        let x = images.narrow(0, start, rows);
        let captured: Arc<Mutex<Vec<Option<Tensor>>>> =
            Arc::new(Mutex::new((0..nslots).map(|_| None).collect()));
        let sink = Arc::clone(&captured);
        let previous = net
            .slots()
            .set_tap(Some(Box::new(move |id: SlotId, x: &Tensor| {
                if let Ok(mut v) = sink.lock() {
                    v[id.0] = Some(x.detach().copy());
                }
                None
            })));
        let outs = net.block_outputs(&x, false);
        net.slots().set_tap(previous);
        let outs = outs?;
        let pre: Vec<Tensor> = std::mem::take(&mut *captured.lock().map_err(|_| poisoned())?)
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.ok_or_else(|| {
                    NnError::Distortion(format!(
                        "{}: slot {:?} never ran in the forward pass",
                        net.arch(),
                        net.slots()
                            .iter()
                            .nth(i)
                            .map(|s| s.layer.name.as_str())
                            .unwrap_or("?")
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let mut inputs = Vec::with_capacity(outs.len());
        inputs.push(x.shallow_clone());
        inputs.extend(outs[..outs.len() - 1].iter().map(Tensor::shallow_clone));
        let last = outs
            .last()
            .expect("a network has at least one block")
            .shallow_clone();
        out.push(CleanBatch {
            inputs,
            pre,
            out: last,
            rows,
        });
        start += rows;
    }
    Ok(out)
}

pub(super) fn poisoned() -> NnError {
    NnError::Distortion("a worker thread panicked".into())
}

/// Fills the NaN cells of `table` that belong to `units`, using one worker thread per network
/// in `nets` (all with the same weights and activations; `nets[0]` also runs the clean pass).
///
/// `images` is the sample `[N, C, H, W]` (on any device the networks live on); the table's
/// candidates say which variants exist. On an injected stop ([`ExtractConfig::stop_after_units`])
/// the checkpoint is written and [`NnError::Interrupted`] returned. On success the table is
/// returned with every cell of `units` filled.
pub fn extract(
    nets: Vec<Box<dyn BlockNet>>,
    images: &Tensor,
    mut table: DistortionTable,
    units: &[WorkUnit],
    metric: Arc<dyn DistortionMetric>,
    config: &ExtractConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(DistortionTable, ExtractStats)> {
    let Some(first) = nets.first() else {
        return Err(NnError::Distortion("no network given".into()));
    };
    if config.batch == 0 {
        return Err(NnError::Distortion(
            "the batch must hold at least one image".into(),
        ));
    }
    let n_images = images.size().first().copied().unwrap_or(0);
    if n_images == 0 {
        return Err(NnError::Distortion("the sample holds no images".into()));
    }
    // Jobs per layer, checked against the network.
    let mut jobs = Vec::with_capacity(table.layers.len());
    for (name, d) in &table.layers {
        let slot = first.slots().get(name).map_err(|_| {
            NnError::Distortion(format!(
                "the table names layer {name:?}, which network {:?} does not have",
                first.arch()
            ))
        })?;
        if slot.layer.channels as usize != d.channels {
            return Err(NnError::WrongChannelCount {
                layer: name.clone(),
                expected: slot.layer.channels as usize,
                found: d.channels,
            });
        }
        jobs.push(LayerJob {
            name: name.clone(),
            slot: first.slots().id(name)?,
            block: slot.block,
            height: slot.layer.height,
            width: slot.layer.width,
            candidates: d.candidates.clone(),
        });
    }
    let total: u64 = units
        .iter()
        .map(|u| (u.channels.len() * jobs[u.layer].candidates.len()) as u64)
        .sum();
    let pending: Vec<WorkUnit> = units
        .iter()
        .filter(|u| !store::unit_done(&table, u))
        .cloned()
        .collect();
    let done: u64 = total
        - pending
            .iter()
            .map(|u| (u.channels.len() * jobs[u.layer].candidates.len()) as u64)
            .sum::<u64>();
    progress(Progress::Start { total, done });
    let mut stats = ExtractStats::default();
    if pending.is_empty() {
        return Ok((table, stats));
    }

    let clean = clean_pass(first.as_ref(), images, config.batch)?;
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Result<UnitResult>>();
    let pending = Arc::new(pending);
    let jobs = Arc::new(jobs);
    let images = n_images as f64;
    let mut handles = Vec::with_capacity(nets.len());
    for mut net in nets {
        let shared: Vec<CleanBatch> = clean.iter().map(CleanBatch::share).collect();
        let (next, stop, tx, pending, jobs, metric) = (
            Arc::clone(&next),
            Arc::clone(&stop),
            tx.clone(),
            Arc::clone(&pending),
            Arc::clone(&jobs),
            Arc::clone(&metric),
        );
        let (schedule, threads) = (config.schedule, config.threads_per_worker.max(1));
        handles.push(std::thread::spawn(move || {
            tch::set_num_threads(threads as i32);
            let mut worker = Worker {
                net: net.as_mut(),
                clean: &shared,
                metric: metric.as_ref(),
                schedule,
                images,
            };
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(unit) = pending.get(i) else { break };
                let r = worker.run_unit(unit, &jobs[unit.layer]);
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    break;
                }
            }
        }));
    }
    drop(tx);
    drop(clean);

    let mut last_save = Instant::now();
    let mut result: Result<()> = Ok(());
    let save = |table: &DistortionTable| -> Result<()> {
        match &config.checkpoint {
            Some((path, run)) => store::save(path, table, run),
            None => Ok(()),
        }
    };
    for r in rx {
        match r {
            Ok(u) => {
                if config.stop_after_units.is_some_and(|k| stats.units >= k) {
                    continue;
                }
                let unit = &pending[pending
                    .iter()
                    .position(|p| p.id == u.unit)
                    .expect("a pending unit")];
                let d = &mut table.layers[unit.layer];
                let k = d.k();
                for (i, c) in unit.channels.clone().enumerate() {
                    d.row_mut(c).copy_from_slice(&u.values[i * k..(i + 1) * k]);
                }
                let cells = u.values.len() as u64;
                stats.units += 1;
                stats.cells += cells;
                stats.evaluated += u.evaluated;
                stats.image_rows += u.rows_total;
                stats.image_rows_run += u.rows_run;
                stats.passes += u.passes;
                progress(Progress::Unit {
                    layer: jobs[unit.layer].name.clone(),
                    cells,
                });
                if config.stop_after_units.is_some_and(|k| stats.units >= k) {
                    stop.store(true, Ordering::Relaxed);
                }
                if config.checkpoint.is_some() && last_save.elapsed() >= config.checkpoint_every {
                    if let Err(e) = save(&table) {
                        stop.store(true, Ordering::Relaxed);
                        result = result.and(Err(e));
                    }
                    last_save = Instant::now();
                }
            }
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
    }
    for h in handles {
        if h.join().is_err() && result.is_ok() {
            result = Err(poisoned());
        }
    }
    stats.seconds = t0.elapsed().as_secs_f64();
    let interrupted = config.stop_after_units.is_some_and(|k| stats.units >= k)
        && units.iter().any(|u| !store::unit_done(&table, u));
    if result.is_err() || interrupted {
        save(&table)?;
        result?;
        return Err(NnError::Interrupted { units: stats.units });
    }
    Ok((table, stats))
}

/// Devices are named `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device> {
    let bad = || {
        NnError::Distortion(format!(
            "unknown device {text:?} (expected cpu, cuda or cuda:N)"
        ))
    };
    let device = match text.trim() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        t => match t.strip_prefix("cuda:") {
            Some(n) => Device::Cuda(n.parse().map_err(|_| bad())?),
            None => return Err(bad()),
        },
    };
    if let Device::Cuda(i) = device
        && (i as i64) >= tch::Cuda::device_count()
    {
        return Err(NnError::Distortion(format!(
            "device {text:?} is not available ({} CUDA devices)",
            tch::Cuda::device_count()
        )));
    }
    Ok(device)
}
