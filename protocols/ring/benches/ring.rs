//! Criterion benches of the ring kernels: convolutions on ResNet layer shapes, PRG throughput.

fn main() {}
