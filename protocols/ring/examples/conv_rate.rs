//! Ring convolution throughput on the ResNet layer shapes of the `knapsec-benches` comparison,
//! without libtorch: milliseconds per call and GMAC/s, with uniformly random weights (three
//! IFMA per product) and with small plaintext weights (two), both prepared once
//! (`PreparedConv`). For quick kernel work:
//! `cargo run --release -p knapsec-ring --example conv_rate` (`T=` threads, default 2;
//! `SHAPE=` a part of the layer names to run; `MS=` milliseconds per measurement).

use knapsec_ring::{Conv2dParams, PreparedConv, Prg, RingTensor, conv2d_prepared};
use std::hint::black_box;
use std::time::Instant;

/// (name, c_in, c_out, input size, kernel, stride)
const SHAPES: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("r18_64x32x32_3x3", 64, 64, 32, 3, 1),
    ("r18_128x16x16_3x3", 128, 128, 16, 3, 1),
    ("r18_256x8x8_3x3", 256, 256, 8, 3, 1),
    ("r18_512x4x4_3x3", 512, 512, 4, 3, 1),
    ("r50_64x56x56_1x1", 64, 64, 56, 1, 1),
    ("r50_64x56x56_3x3", 64, 64, 56, 3, 1),
    ("r50_256x14x14_3x3", 256, 256, 14, 3, 1),
    ("r50_128x28x28_3x3_s2", 128, 128, 56, 3, 2),
];

/// Best time of `f` over about `budget_ms` of calls (at least five).
fn best_ms(budget_ms: u128, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut calls = 0;
    while calls < 5 || start.elapsed().as_millis() < budget_ms {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        calls += 1;
    }
    best
}

fn main() {
    let threads = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let mut prg = Prg::new(&[7u8; 32], "example/conv_rate");
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "layer", "rand ms", "GMAC/s", "plain ms", "GMAC/s"
    );
    let only = std::env::var("SHAPE").unwrap_or_default();
    let ms = std::env::var("MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    for &(name, c, o, h, k, s) in SHAPES.iter().filter(|s| s.0.contains(&only)) {
        let x = prg.ring(&[c, h, h]);
        let w = prg.ring(&[o, c, k, k]);
        let small: Vec<i64> = prg
            .u64s(w.len())
            .iter()
            .map(|v| (*v >> 50) as i64 - (1 << 13))
            .collect();
        let w_small = RingTensor::from_i64(w.dims(), &small).unwrap();
        let p = Conv2dParams::new([k, k])
            .stride([s, s])
            .padding([k / 2, k / 2]);
        let (oh, ow) = p.output_hw(h, h).unwrap();
        let macs = (o * c * k * k * oh * ow) as f64;
        let (w, w_small) = (
            PreparedConv::new(&w, &p).unwrap(),
            PreparedConv::new(&w_small, &p).unwrap(),
        );
        let rand = best_ms(ms, || drop(black_box(conv2d_prepared(&x, &w).unwrap())));
        let plain = best_ms(ms, || {
            drop(black_box(conv2d_prepared(&x, &w_small).unwrap()))
        });
        println!(
            "{name:<22} {rand:>9.3} {:>9.1} {plain:>9.3} {:>9.1}",
            macs / rand / 1e6,
            macs / plain / 1e6
        );
    }
}
