//! Forward+backward timing of a ResNet with plain ReLUs against the same network with a mixed
//! block spec (issue figure: `resnet18-cifar`, batch 64, 2 threads, goal ≤ 1.5×). Used by the
//! `forward_backward` bench of this crate.

use crate::adapter::default_candidates;
use knapsec_core::{ArchOptions, BlockSpec};
use knapsec_nn::{BlockNet, Network, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Figures of one run of [`forward_backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// Registry name of the architecture.
    pub arch: String,
    /// Images per pass.
    pub batch: i64,
    /// Threads libtorch ran with.
    pub threads: i32,
    /// Timed passes (after a warm-up).
    pub iterations: u32,
    /// Mean seconds of one forward+backward pass with plain ReLUs.
    pub relu_s: f64,
    /// The same with the mixed block spec.
    pub block_s: f64,
    /// Fraction of DReLUs the mixed spec keeps.
    pub drelu_fraction: f64,
}

impl Figures {
    /// `block_s / relu_s`.
    pub fn ratio(&self) -> f64 {
        self.block_s / self.relu_s
    }

    /// One JSON object (no dependency on a JSON crate).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"bench\":\"nn-forward-backward\",\"arch\":\"{}\",\"batch\":{},\"threads\":{},\"iterations\":{},\"relu_s\":{:.4},\"block_relu_s\":{:.4},\"ratio\":{:.3},\"drelu_fraction\":{:.4}}}",
            self.arch,
            self.batch,
            self.threads,
            self.iterations,
            self.relu_s,
            self.block_s,
            self.ratio(),
            self.drelu_fraction
        )
    }
}

/// A deterministic mixed spec: each channel takes a candidate of its layer's default list
/// (reference presets) picked by a fixed hash of (layer, channel), so that every layer mixes
/// many patch sizes, ReLUs and identities.
pub fn mixed_spec(net: &dyn BlockNet) -> BlockSpec {
    let mut spec = BlockSpec::new(net.arch());
    for (l, slot) in net.slots().iter().enumerate() {
        let cands = default_candidates(&slot.layer);
        let blocks = (0..slot.layer.channels as usize)
            .map(|c| {
                let h =
                    (l as u64 * 0x9E37_79B9 + c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
                cands[(h % cands.len() as u64) as usize]
            })
            .collect();
        spec.layers.insert(slot.layer.name.clone(), blocks);
    }
    spec
}

fn time_passes(net: &Network, x: &Tensor, iterations: u32) -> f64 {
    let pass = || {
        for v in net.vs.trainable_variables() {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let y = net.net.forward_t(x, true).expect("input shape was checked");
        y.square().mean(Kind::Float).backward();
    };
    pass(); // warm-up
    let start = Instant::now();
    for _ in 0..iterations {
        pass();
    }
    start.elapsed().as_secs_f64() / f64::from(iterations)
}

/// Times `iterations` forward+backward passes (training mode) of `arch` on random input of
/// `batch` images with `threads` libtorch threads, with plain ReLUs and with [`mixed_spec`].
pub fn forward_backward(
    arch: &str,
    options: &ArchOptions,
    batch: i64,
    threads: i32,
    iterations: u32,
) -> Result<Figures> {
    tch::set_num_threads(threads);
    // The weights come from tch's initialisers (this runs in its own process, `knapsec
    // bench`); the input from a seeded generator of its own.
    tch::manual_seed(0);
    let mut net = Network::build(arch, options, Device::Cpu)?;
    let [c, h, w] = net.net.input_shape();
    let x = knapsec_nn::random::randn(
        &mut knapsec_nn::random::seeded(0),
        &[batch, c, h, w],
        (Kind::Float, Device::Cpu),
    );
    let relu_s = time_passes(&net, &x, iterations);
    let spec = mixed_spec(net.net.as_ref());
    let table = net.net.slots().layer_table()?;
    let drelu_fraction = spec.drelus(&table) as f64 / table.drelus() as f64;
    net.net.apply_spec(&spec)?;
    let block_s = time_passes(&net, &x, iterations);
    Ok(Figures {
        arch: arch.to_string(),
        batch,
        threads,
        iterations,
        relu_s,
        block_s,
        drelu_fraction,
    })
}
