//! knapsec-ring: the arithmetic under every secure backend (digest §6.2–§6.7, §6.11, §6.16).
//!
//! * [`tensor`]: [`RingTensor`], dense tensors over Z_2^64 (`u64`, wrapping), element-wise
//!   ops, local truncation, channel slicing/concatenation/broadcast.
//! * [`fixed`]: fixed-point encoding of reals (same rounding as `knapsec_core::graph`).
//! * [`gemm`]: packed, cache-blocked, rayon-parallel wrapping matrix product with run-time
//!   selected AVX-512 / AVX2 micro-kernels.
//! * [`conv`]: convolutions (stride, padding, dilation, groups, depthwise), sums of
//!   convolutions in one product (Beaver linear layers), fully connected layers, weights
//!   prepared once for many convolutions.
//! * [`pool`]: pooling window sums and taps, global sums, block-ReLU patch sums and expansion.
//! * [`resize`]: zero padding and nearest / bilinear resizing (public geometry and weights).
//! * [`prg`]: AES-CTR pseudo-random generators keyed per session with domain separation.
//! * [`simd`]: the run-time choice of the byte-lane kernels (values mod 67, PrivateCompare).
//!
//! No tch, no tokio: parties link this crate without libtorch.

pub mod conv;
pub mod error;
pub mod fixed;
pub mod gemm;
pub mod pool;
pub mod prg;
pub mod resize;
pub mod simd;
pub mod tensor;

pub use conv::{
    Conv2dParams, PreparedConv, conv2d, conv2d_batch, conv2d_prepared, conv2d_reference,
    conv2d_sum, linear,
};
pub use error::{Result, RingError};
pub use pool::{
    BlockLayout, ChannelBlock, TapPadding, global_sum, window_counts, window_sums, window_taps,
};
pub use prg::Prg;
pub use resize::{pad, resize};
pub use tensor::RingTensor;
