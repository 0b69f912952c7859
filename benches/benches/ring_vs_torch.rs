//! Ring convolution vs libtorch f32 convolution on the same shapes, same threads, run
//! alternately; prints one JSON object per shape (best and median times; `ratio` = best ring /
//! best torch; `cpu_ratio` = the same from process CPU time per call, which a loaded machine
//! disturbs less) and a summary. Threads: `KNAPSEC_BENCH_THREADS`
//! (default 2) for both rayon and libtorch.
//!
//! Two ring products per shape, as the secure linear layer runs them (`knapsec-securenn`
//! `linear`): uniformly random ring weights (`ratio`: the offline products with the masked
//! weights `B`, `F`), and the server's plaintext weights, the torch weights in fixed point with
//! 12 fractional bits (`ratio_plain_weights`: the online product `conv(X₁ + E, W)`, which takes
//! the two-product IFMA kernel for small operands).
//!
//! Both ring products take weights prepared once (`PreparedConv`), as the secure layers hold
//! them for a session (the server's `W`, the helper's `F`); `ring_unprepared_ms` is the
//! random-weight product with `conv2d`, which makes the kernel's second operands of the
//! weights on every call.

use knapsec_benches::{SHAPES, cpu_time_per_call, paired_times};
use knapsec_ring::{Conv2dParams, PreparedConv, Prg, RingTensor, conv2d, conv2d_prepared};
use std::hint::black_box;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn main() {
    let threads: usize = std::env::var("KNAPSEC_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    tch::set_num_threads(threads as i32);
    tch::manual_seed(1);
    let budget = Duration::from_millis(
        std::env::var("KNAPSEC_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let mut key = [0u8; 32];
    key.iter_mut()
        .enumerate()
        .for_each(|(i, k)| *k = i as u8 ^ 0x5a);
    let mut prg = Prg::new(&key, "bench/ring_vs_torch");
    let mut rows = Vec::new();
    for sh in SHAPES {
        let (c, o, h, k, st, g) = (sh.c_in, sh.c_out, sh.size, sh.kernel, sh.stride, sh.groups);
        let pad = k / 2;
        let x = prg.ring(&[c, h, h]);
        let w = prg.ring(&[o, c / g, k, k]);
        let p = Conv2dParams::new([k, k])
            .stride([st, st])
            .padding([pad, pad])
            .groups(g);
        let tx = Tensor::randn(
            [1, c as i64, h as i64, h as i64],
            (Kind::Float, Device::Cpu),
        );
        let tw = Tensor::randn(
            [o as i64, (c / g) as i64, k as i64, k as i64],
            (Kind::Float, Device::Cpu),
        );
        let (sti, padi) = (st as i64, pad as i64);
        let tw_values = Vec::<f32>::try_from(tw.flatten(0, -1)).unwrap();
        let w_plain = RingTensor::encode_f32(w.dims(), &tw_values, 12).unwrap();
        let torch_conv = || {
            let _ = black_box(tx.conv2d(
                &tw,
                None::<&Tensor>,
                [sti, sti],
                [padi, padi],
                [1, 1],
                g as i64,
            ));
        };
        let (w_prepared, w_plain) = (
            PreparedConv::new(&w, &p).unwrap(),
            PreparedConv::new(&w_plain, &p).unwrap(),
        );
        let ring_conv = |weights: &PreparedConv| {
            let _ = black_box(conv2d_prepared(black_box(&x), black_box(weights)).unwrap());
        };
        let [(plain, _), (torch_again, _)] =
            paired_times(5, budget, || ring_conv(&w_plain), &torch_conv);
        let [(ring, ring_med), (torch, torch_med)] =
            paired_times(5, budget, || ring_conv(&w_prepared), &torch_conv);
        let [(unprepared, _), _] = paired_times(
            5,
            budget,
            || drop(black_box(conv2d(black_box(&x), black_box(&w), &p).unwrap())),
            &torch_conv,
        );
        let ring_cpu = cpu_time_per_call(5, || ring_conv(&w_prepared));
        let torch_cpu = cpu_time_per_call(5, &torch_conv);
        let ho = (h + 2 * pad - k) / st + 1;
        let macs = (o * (c / g) * k * k * ho * ho) as f64;
        let row = serde_json::json!({
            "shape": sh.name,
            "ring_ms": ring.as_secs_f64() * 1e3,
            "torch_f32_ms": torch.as_secs_f64() * 1e3,
            "ratio": ring.as_secs_f64() / torch.as_secs_f64(),
            "ring_plain_weights_ms": plain.as_secs_f64() * 1e3,
            "ring_unprepared_ms": unprepared.as_secs_f64() * 1e3,
            "ratio_plain_weights": plain.as_secs_f64() / torch_again.as_secs_f64(),
            "ring_median_ms": ring_med.as_secs_f64() * 1e3,
            "torch_f32_median_ms": torch_med.as_secs_f64() * 1e3,
            "ring_gmacs": macs / ring.as_secs_f64() / 1e9,
            "ring_gmacs_per_cpu_s": macs / ring_cpu.as_secs_f64() / 1e9,
            "torch_gmacs_per_cpu_s": macs / torch_cpu.as_secs_f64() / 1e9,
            "cpu_ratio": ring_cpu.as_secs_f64() / torch_cpu.as_secs_f64(),
            "torch_gmacs": macs / torch.as_secs_f64() / 1e9,
        });
        println!("{row}");
        rows.push(row);
    }
    let geomean = |key: &str| {
        let v: Vec<f64> = rows.iter().map(|r| r[key].as_f64().unwrap()).collect();
        (v.iter().map(|r| r.ln()).sum::<f64>() / v.len() as f64).exp()
    };
    let max = |key: &str| {
        rows.iter()
            .map(|r| r[key].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    println!(
        "{}",
        serde_json::json!({"summary": {
            "threads": threads,
            "geomean_ratio": geomean("ratio"),
            "max_ratio": max("ratio"),
            "geomean_cpu_ratio": geomean("cpu_ratio"),
            "geomean_ratio_plain_weights": geomean("ratio_plain_weights"),
            "max_ratio_plain_weights": max("ratio_plain_weights"),
            "target": 4.0
        }})
    );
}
