//! knapsec-benches: benchmarks that need libtorch, kept out of the protocol crates (which never
//! link tch). `./setup.sh cargo bench -p knapsec-benches` runs `benches/ring_vs_torch.rs`: the
//! ring convolution (wrapping `u64`, Z_2^64) against libtorch's `f32` convolution on the same
//! layer shapes, both on the same threads, printed as JSON with the ratios (issue 6's target:
//! ring ≤ 4× libtorch on ResNet layer shapes).
//!
//! On a shared machine wall-clock times swing by 10× or more; compare the `cpu_ratio`
//! column (process CPU time per call) and run with `OMP_WAIT_POLICY=PASSIVE`, else
//! libtorch's OpenMP threads spin and bill waiting as CPU time:
//! `OMP_WAIT_POLICY=PASSIVE ./setup.sh cargo bench -p knapsec-benches`.

use std::time::{Duration, Instant};

/// A benchmarked convolution layer.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Layer name (network, input size, kernel).
    pub name: &'static str,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Height = width of the input.
    pub size: usize,
    /// Kernel height = width.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Groups (equal to the channels for a depthwise layer).
    pub groups: usize,
}

const fn s(
    name: &'static str,
    c_in: usize,
    c_out: usize,
    size: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
) -> ConvShape {
    ConvShape {
        name,
        c_in,
        c_out,
        size,
        kernel,
        stride,
        groups,
    }
}

/// ResNet18 (CIFAR), ResNet50 (ImageNet) and a MobileNetV2 depthwise layer.
pub const SHAPES: &[ConvShape] = &[
    s("r18_64x32x32_3x3", 64, 64, 32, 3, 1, 1),
    s("r18_128x16x16_3x3", 128, 128, 16, 3, 1, 1),
    s("r18_256x8x8_3x3", 256, 256, 8, 3, 1, 1),
    s("r18_512x4x4_3x3", 512, 512, 4, 3, 1, 1),
    s("r50_64x56x56_1x1", 64, 64, 56, 1, 1, 1),
    s("r50_64x56x56_3x3", 64, 64, 56, 3, 1, 1),
    s("r50_256x14x14_3x3", 256, 256, 14, 3, 1, 1),
    s("r50_128x28x28_3x3_s2", 128, 128, 56, 3, 2, 1),
    s("mbv2_dw_144x56x56_3x3", 144, 144, 56, 3, 1, 144),
];

/// Best and median wall times of two closures run alternately (one warm-up each, then pairs
/// until at least `min_runs` pairs and about `budget` of time). Alternating makes both see
/// the same background load; the best time is the least disturbed one.
pub fn paired_times(
    min_runs: usize,
    budget: Duration,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> [(Duration, Duration); 2] {
    a();
    b();
    let start = Instant::now();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    while ta.len() < min_runs || (start.elapsed() < budget && ta.len() < 1000) {
        let t = Instant::now();
        a();
        ta.push(t.elapsed());
        let t = Instant::now();
        b();
        tb.push(t.elapsed());
    }
    [summary(ta), summary(tb)]
}

/// CPU time consumed so far by this process (all threads), from `CLOCK_PROCESS_CPUTIME_ID`.
/// Unlike wall time it does not grow while the process waits for a busy core, so
/// `work / cpu_time` estimates per-core throughput on a loaded machine.
// The C library's `clock_gettime` is the one way to read the process's CPU clock.
#[allow(unsafe_code)]
pub fn process_cpu_time() -> Duration {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout).
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.sec as u64, ts.nsec as u32)
}

/// CPU time per call of `f` (process-wide), averaged over `runs` calls after one warm-up.
pub fn cpu_time_per_call(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let start = process_cpu_time();
    for _ in 0..runs {
        f();
    }
    (process_cpu_time() - start) / runs as u32
}

/// (best, median) of some durations.
fn summary(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort_unstable();
    (times[0], times[times.len() / 2])
}
