//! Register-tile peak of the ring product's IFMA micro-kernel against an f32 FMA micro-kernel
//! of the shape BLAS libraries use (12 × 32), both on operands that stay in L1, one or more
//! threads (`T=2`). It bounds what any ring convolution can reach relative to an f32 one on
//! this CPU: `cargo run --release -p knapsec-ring --example kernel_peak` (x86-64 with
//! AVX-512 IFMA only).

#![allow(clippy::needless_range_loop)]
use std::arch::x86_64::*;
use std::time::Instant;
const MR: usize = 4;
const NR: usize = 16;
/// Three 52-bit multiply-adds per 64-bit product, as `knapsec_ring::gemm`'s kernel.
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn micro(a: &[u64], ac: &[u64], b: &[u64], bc: &[u64], kc: usize, out: &mut [u64]) {
    let zero = _mm512_setzero_si512();
    let (mut c, mut x, mut y) = ([[zero; 2]; MR], [[zero; 2]; MR], [[zero; 2]; MR]);
    unsafe {
        for p in 0..kc {
            let bv = [
                _mm512_loadu_si512(b.as_ptr().add(p * NR).cast()),
                _mm512_loadu_si512(b.as_ptr().add(p * NR + 8).cast()),
            ];
            let bcv = [
                _mm512_loadu_si512(bc.as_ptr().add(p * NR).cast()),
                _mm512_loadu_si512(bc.as_ptr().add(p * NR + 8).cast()),
            ];
            for i in 0..MR {
                let av = _mm512_set1_epi64(*a.as_ptr().add(i * kc + p) as i64);
                let acv = _mm512_set1_epi64(*ac.as_ptr().add(i * kc + p) as i64);
                for j in 0..2 {
                    c[i][j] = _mm512_madd52lo_epu64(c[i][j], av, bv[j]);
                    x[i][j] = _mm512_madd52hi_epu64(x[i][j], av, bv[j]);
                    y[i][j] = _mm512_madd52lo_epu64(y[i][j], acv, bcv[j]);
                }
            }
        }
        for i in 0..MR {
            for j in 0..2 {
                let v = _mm512_add_epi64(_mm512_add_epi64(c[i][j], x[i][j]), y[i][j]);
                _mm512_storeu_si512(out.as_mut_ptr().add(i * NR + 8 * j).cast(), v);
            }
        }
    }
}
/// One f32 FMA per product.
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn micro_f32(a: &[f32], b: &[f32], kc: usize, out: &mut [f32]) {
    // 6x32 f32 tile like sgemm kernels: 12 accumulators
    let mut c = [[_mm512_setzero_ps(); 2]; 12];
    unsafe {
        for p in 0..kc {
            let bv = [
                _mm512_loadu_ps(b.as_ptr().add(p * 32)),
                _mm512_loadu_ps(b.as_ptr().add(p * 32 + 16)),
            ];
            for i in 0..12 {
                let av = _mm512_set1_ps(*a.as_ptr().add(i * kc + p));
                for j in 0..2 {
                    c[i][j] = _mm512_fmadd_ps(av, bv[j], c[i][j]);
                }
            }
        }
        for i in 0..12 {
            for j in 0..2 {
                _mm512_storeu_ps(out.as_mut_ptr().add(i * 32 + 16 * j), c[i][j]);
            }
        }
    }
}
fn main() {
    if !std::is_x86_feature_detected!("avx512ifma") {
        eprintln!("kernel_peak: this CPU has no AVX-512 IFMA");
        std::process::exit(1);
    }
    let kc = 128;
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let a = vec![3u64; MR * kc];
                let ac = a.clone();
                let b = vec![5u64; NR * kc];
                let bc = b.clone();
                let mut out = vec![0u64; MR * NR];
                let iters = 200000;
                let t = Instant::now();
                for _ in 0..iters {
                    unsafe { micro(std::hint::black_box(&a), &ac, &b, &bc, kc, &mut out) };
                    std::hint::black_box(&out);
                }
                let e = t.elapsed().as_secs_f64();
                let macs = (iters * kc * MR * NR) as f64;
                let fa = vec![1.0f32; 12 * kc];
                let fb = vec![1.0f32; 32 * kc];
                let mut fo = vec![0f32; 12 * 32];
                let t = Instant::now();
                for _ in 0..iters {
                    unsafe { micro_f32(std::hint::black_box(&fa), &fb, kc, &mut fo) };
                    std::hint::black_box(&fo);
                }
                let e2 = t.elapsed().as_secs_f64();
                let fmacs = (iters * kc * 12 * 32) as f64;
                println!(
                    "ifma3 kernel {:.2} GMAC/s ({:.2} G IFMA/s); f32 kernel {:.1} GMAC/s",
                    macs / e / 1e9,
                    3.0 * macs / 8.0 / e / 1e9,
                    fmacs / e2 / 1e9
                );
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
