//! `cargo bench -p knapsec-arch-resnet --bench forward_backward [-- ITERATIONS]`: prints one JSON
//! line with the forward+backward time of `resnet18-cifar` (batch 64, 2 threads) with plain
//! ReLUs and with a mixed block spec, and their ratio (goal ≤ 1.5).

fn main() {
    let iterations = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u32>().ok())
        .unwrap_or(5);
    let figures = knapsec_arch_resnet::bench::forward_backward(
        knapsec_arch_resnet::RESNET18_CIFAR,
        &knapsec_core::ArchOptions::default(),
        64,
        2,
        iterations,
    )
    .expect("benchmark runs");
    println!("{}", figures.to_json());
}
