//! Distortion metrics (digest §2.3): how far a variant's network output is from the clean
//! network's output, per image. The engine averages the per-image values over the sample.

use tch::{Kind, Tensor};

/// A distortion metric. Implementations must be deterministic and reduce each image
/// independently (the engine stacks variants and images along the batch).
pub trait DistortionMetric: Send + Sync + std::fmt::Debug {
    /// The name recorded in the table's provenance, e.g. `"output-mse"`.
    fn name(&self) -> &str;

    /// Per-image distortion of `output` against `clean` (same shape `[R, …]`): an `f64`
    /// tensor of `R` values.
    fn per_image(&self, output: &Tensor, clean: &Tensor) -> Tensor;
}

/// The reference's metric (digest §2.3): mean over all output elements of the squared
/// difference, computed in `f64`; the table holds its mean over the images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputMse;

impl DistortionMetric for OutputMse {
    fn name(&self) -> &str {
        "output-mse"
    }

    fn per_image(&self, output: &Tensor, clean: &Tensor) -> Tensor {
        let d = output.to_kind(Kind::Double) - clean.to_kind(Kind::Double);
        d.square().flatten(1, -1).mean_dim(1, false, Kind::Double)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_mse_is_per_image_mean_of_squares() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 4.0]).view([2, 2]);
        let d = Vec::<f64>::try_from(OutputMse.per_image(&a, &b)).unwrap();
        assert_eq!(d, vec![2.0, 4.5]);
        assert_eq!(OutputMse.name(), "output-mse");
    }
}
