//! What the test modules share: the fixtures' paths and, with libtorch, their test input.

use std::path::PathBuf;

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The architecture name of a fixture (`onnx:PATH`).
#[cfg(feature = "torch")]
pub fn arch(name: &str) -> String {
    format!("onnx:{}", fixture(name).display())
}

/// The fixtures' test input: x[i] = ((i·7919) mod 1000)/500 − 1 over the flattened batch.
#[cfg(feature = "torch")]
pub fn test_input(shape: [i64; 4]) -> knapsec_nn::tch::Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    knapsec_nn::tch::Tensor::from_slice(&v).reshape(shape)
}

/// The largest absolute difference of two tensors.
#[cfg(feature = "torch")]
pub fn max_abs(a: &knapsec_nn::tch::Tensor, b: &knapsec_nn::tch::Tensor) -> f64 {
    use knapsec_nn::tch::Kind;
    f64::try_from(
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max(),
    )
    .unwrap()
}
