//! Register-tile peak of the ring product's IFMA micro-kernel against an f32 FMA micro-kernel
//! of the shape BLAS libraries use (12 × 32), both on operands that stay in L1, one or more
//! threads (`T=2`). It bounds what any ring convolution can reach relative to an f32 one on
//! this CPU: `cargo run --release -p knapsec-ring --example kernel_peak`. It builds on every
//! target, and runs on x86-64 CPUs with AVX-512 F, DQ, VL and IFMA; elsewhere it says what is
//! missing and exits with status 1.

// The kernels are written with `unsafe` SIMD intrinsics; every block says why it is sound.
#![allow(unsafe_code)]
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    const MR: usize = 4;
    const NR: usize = 16;
    /// Rows of the f32 tile.
    const FR: usize = 12;
    /// Columns of the f32 tile (two 512-bit vectors of `f32`).
    const FC: usize = 32;

    /// Three 52-bit multiply-adds per 64-bit product, as `knapsec_ring::gemm`'s kernel:
    /// `a`, `ac` hold `MR` rows of `kc` values, `b`, `bc` `kc` rows of `NR`, `out` `MR × NR`.
    #[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
    fn micro(a: &[u64], ac: &[u64], b: &[u64], bc: &[u64], kc: usize, out: &mut [u64]) {
        assert!(
            a.len() >= MR * kc && ac.len() >= MR * kc,
            "micro: A too short"
        );
        assert!(
            b.len() >= NR * kc && bc.len() >= NR * kc,
            "micro: B too short"
        );
        assert!(out.len() >= MR * NR, "micro: C too short");
        let zero = _mm512_setzero_si512();
        let (mut c, mut x, mut y) = ([[zero; 2]; MR], [[zero; 2]; MR], [[zero; 2]; MR]);
        for p in 0..kc {
            // SAFETY: p < kc, so p·NR + 16 ≤ NR·kc ≤ the lengths of b and bc (asserted).
            let (bv, bcv) = unsafe {
                (
                    [
                        _mm512_loadu_si512(b.as_ptr().add(p * NR).cast()),
                        _mm512_loadu_si512(b.as_ptr().add(p * NR + 8).cast()),
                    ],
                    [
                        _mm512_loadu_si512(bc.as_ptr().add(p * NR).cast()),
                        _mm512_loadu_si512(bc.as_ptr().add(p * NR + 8).cast()),
                    ],
                )
            };
            for i in 0..MR {
                // SAFETY: i·kc + p < MR·kc ≤ the lengths of a and ac (asserted).
                let (av, acv) = unsafe {
                    (
                        _mm512_set1_epi64(*a.as_ptr().add(i * kc + p) as i64),
                        _mm512_set1_epi64(*ac.as_ptr().add(i * kc + p) as i64),
                    )
                };
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
                // SAFETY: i·NR + 8j + 8 ≤ MR·NR ≤ out.len() (asserted).
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(i * NR + 8 * j).cast(), v) };
            }
        }
    }

    /// One f32 FMA per product, on a 12 × 32 tile like sgemm kernels (24 accumulators):
    /// `a` holds `FR` rows of `kc` values, `b` `kc` rows of `FC`, `out` `FR × FC`.
    #[target_feature(enable = "avx512f")]
    fn micro_f32(a: &[f32], b: &[f32], kc: usize, out: &mut [f32]) {
        assert!(a.len() >= FR * kc && b.len() >= FC * kc && out.len() >= FR * FC);
        let mut c = [[_mm512_setzero_ps(); 2]; FR];
        for p in 0..kc {
            // SAFETY: p·FC + 32 ≤ FC·kc ≤ b.len() (asserted).
            let bv = unsafe {
                [
                    _mm512_loadu_ps(b.as_ptr().add(p * FC)),
                    _mm512_loadu_ps(b.as_ptr().add(p * FC + 16)),
                ]
            };
            for i in 0..FR {
                // SAFETY: i·kc + p < FR·kc ≤ a.len() (asserted).
                let av = unsafe { _mm512_set1_ps(*a.as_ptr().add(i * kc + p)) };
                for j in 0..2 {
                    c[i][j] = _mm512_fmadd_ps(av, bv[j], c[i][j]);
                }
            }
        }
        for i in 0..FR {
            for j in 0..2 {
                // SAFETY: i·FC + 16j + 16 ≤ FR·FC ≤ out.len() (asserted).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * FC + 16 * j), c[i][j]) };
            }
        }
    }

    /// Measures both kernels on `threads` threads and prints one line per thread.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, DQ and IFMA.
    pub unsafe fn run(threads: usize) {
        let kc = 128;
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
                        // SAFETY: the CPU has the kernel's features (`run`'s contract).
                        unsafe { micro(std::hint::black_box(&a), &ac, &b, &bc, kc, &mut out) };
                        std::hint::black_box(&out);
                    }
                    let e = t.elapsed().as_secs_f64();
                    let macs = (iters * kc * MR * NR) as f64;
                    let fa = vec![1.0f32; FR * kc];
                    let fb = vec![1.0f32; FC * kc];
                    let mut fo = vec![0f32; FR * FC];
                    let t = Instant::now();
                    for _ in 0..iters {
                        // SAFETY: the CPU has AVX-512 F (`run`'s contract).
                        unsafe { micro_f32(std::hint::black_box(&fa), &fb, kc, &mut fo) };
                        std::hint::black_box(&fo);
                    }
                    let e2 = t.elapsed().as_secs_f64();
                    let fmacs = (iters * kc * FR * FC) as f64;
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
}

fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // The IFMA level needs AVX-512 F, DQ, VL and IFMA: a superset of what both kernels use.
    let missing = knapsec_ring::gemm::KernelLevel::Avx512Ifma.missing_features();
    #[cfg(target_arch = "x86_64")]
    if missing.is_empty() {
        // SAFETY: the CPU has AVX-512 F, DQ and IFMA (checked just above).
        return unsafe { x86::run(threads) };
    }
    let _ = threads;
    eprintln!(
        "kernel_peak: needs an x86-64 CPU with {} (this one lacks {})",
        knapsec_ring::gemm::KernelLevel::Avx512Ifma
            .features()
            .join(", "),
        missing.join(", ")
    );
    std::process::exit(1);
}
