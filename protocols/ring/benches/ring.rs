//! Criterion benches of the ring kernels: convolutions on ResNet layer shapes (CIFAR ResNet18
//! and ImageNet ResNet50), a MobileNetV2 depthwise layer, the two-term Beaver sum, and PRG
//! throughput. `cargo bench -p knapsec-ring`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use knapsec_ring::{Conv2dParams, Prg, RingTensor, conv2d, conv2d_sum};
use std::hint::black_box;

/// (name, C_in, C_out, H, kernel, stride, groups)
pub const SHAPES: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("r18_64x32x32_3x3", 64, 64, 32, 3, 1, 1),
    ("r18_128x16x16_3x3", 128, 128, 16, 3, 1, 1),
    ("r18_256x8x8_3x3", 256, 256, 8, 3, 1, 1),
    ("r18_512x4x4_3x3", 512, 512, 4, 3, 1, 1),
    ("r50_64x56x56_1x1", 64, 64, 56, 1, 1, 1),
    ("r50_64x56x56_3x3", 64, 64, 56, 3, 1, 1),
    ("r50_256x14x14_3x3", 256, 256, 14, 3, 1, 1),
    ("mbv2_dw_144x56x56_3x3", 144, 144, 56, 3, 1, 144),
];

fn tensors(
    prg: &mut Prg,
    c: usize,
    o: usize,
    h: usize,
    k: usize,
    g: usize,
) -> (RingTensor, RingTensor) {
    (prg.ring(&[c, h, h]), prg.ring(&[o, c / g, k, k]))
}

fn convs(cr: &mut Criterion) {
    let mut prg = Prg::new(&[1; 32], "bench");
    let mut group = cr.benchmark_group("ring_conv");
    group.sample_size(10);
    for &(name, c, o, h, k, s, g) in SHAPES {
        let (x, w) = tensors(&mut prg, c, o, h, k, g);
        let p = Conv2dParams::new([k, k])
            .stride([s, s])
            .padding([k / 2, k / 2])
            .groups(g);
        let macs = (o * (c / g) * k * k * h * h / (s * s)) as u64;
        group.throughput(Throughput::Elements(macs));
        group.bench_function(BenchmarkId::new("conv", name), |b| {
            b.iter(|| conv2d(black_box(&x), black_box(&w), &p).unwrap())
        });
    }
    for &(name, c, o, h, k, s, g) in &SHAPES[..2] {
        let (x, w) = tensors(&mut prg, c, o, h, k, g);
        let (e, w0) = tensors(&mut prg, c, o, h, k, g);
        let p = Conv2dParams::new([k, k])
            .stride([s, s])
            .padding([k / 2, k / 2])
            .groups(g);
        group.bench_function(BenchmarkId::new("beaver_sum2", name), |b| {
            b.iter(|| conv2d_sum(&[(black_box(&x), black_box(&w)), (&e, &w0)], &p).unwrap())
        });
    }
    group.finish();
}

fn prgs(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("prg");
    let n = 1 << 20;
    group.throughput(Throughput::Bytes((n * 8) as u64));
    let mut prg = Prg::new(&[2; 32], "bench");
    let mut buf = vec![0u64; n];
    group.bench_function("fill_u64_8MiB", |b| {
        b.iter(|| prg.fill_u64(black_box(&mut buf)))
    });
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("mod67_1M", |b| b.iter(|| prg.mod_p(n, 67).unwrap()));
    group.bench_function("bits_1M", |b| b.iter(|| prg.bits(n)));
    group.finish();
}

criterion_group!(benches, convs, prgs);
criterion_main!(benches);
