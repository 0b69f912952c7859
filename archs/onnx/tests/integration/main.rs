//! knapsec-arch-onnx's integration tests, in one test binary: import without libtorch, and
//! with the `torch` feature the tch interpreter and the fixtures exported by PyTorch.

mod import;
#[cfg(feature = "torch")]
mod interp;
#[cfg(feature = "torch")]
mod secure;
mod support;
#[cfg(feature = "torch")]
mod torch_export;
