use knapsec_ring::{Conv2dParams, Prg, RingTensor, conv2d};
use std::time::Instant;
fn best<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut b = f64::MAX;
    for _ in 0..30 {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}
fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let mut prg = Prg::new(&[7; 32], "prof");
    for &(c, o, h, st) in &[
        (256usize, 256usize, 14usize, 1usize),
        (64, 64, 56, 1),
        (128, 128, 56, 2),
        (128, 128, 16, 1),
    ] {
        let x = prg.ring(&[c, h, h]);
        let w = prg.ring(&[o, c, 3, 3]);
        let small: Vec<u64> = prg
            .u64s(o * c * 9)
            .iter()
            .map(|v| ((*v as i64) >> 50) as u64)
            .collect();
        let ws = RingTensor::from_vec(&[o, c, 3, 3], small).unwrap();
        let p = Conv2dParams::new([3, 3]).stride([st, st]).padding([1, 1]);
        let ho = (h + 2 - 3) / st + 1;
        let macs = (o * c * 9 * ho * ho) as f64;
        let t = best(|| {
            std::hint::black_box(conv2d(&x, &w, &p).unwrap());
        });
        let ts = best(|| {
            std::hint::black_box(conv2d(&x, &ws, &p).unwrap());
        });
        // pure gemm on dense B
        let (m, k, n) = (o, c * 9, ho * ho);
        let a = prg.u64s(m * k);
        let b = prg.u64s(k * n);
        let mut cc = vec![0u64; m * n];
        let tg = best(|| knapsec_ring::gemm::gemm(m, k, n, &a, &b, &mut cc));
        println!(
            "{c}x{h}x{h} s{st}: conv {:.3} ms {:.1} GMAC/s | small {:.3} ms {:.1} | dense gemm {:.3} ms {:.1}",
            t * 1e3,
            macs / t / 1e9,
            ts * 1e3,
            macs / ts / 1e9,
            tg * 1e3,
            macs / tg / 1e9
        );
    }
}
