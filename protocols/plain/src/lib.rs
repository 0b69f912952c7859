//! knapsec-plain: the cleartext fixed-point executor of a secure model (DESIGN §5, digest §6):
//! **the oracle of every secure backend**. It computes, in the clear, exactly the arithmetic
//! that the secure protocols reproduce on shares.
//!
//! # Fixed-point semantics (the contract with the secure backends)
//!
//! Values are elements of Z_2^64 ([`knapsec_ring::RingTensor`]) read as signed `i64` with
//! `f = frac_bits` fractional bits; every sum and product wraps modulo 2^64. `floor` is
//! rounding toward −∞ (arithmetic shift for powers of two). Per op:
//!
//! | op | plain result | secure backend (SecureNN style) |
//! |---|---|---|
//! | `Input` | `round(x · 2^f)` (half away from zero; non-finite values are refused) | exact (same encoding) |
//! | `Conv2d`, `Linear` | `floor(Σ x·w / 2^f) + b`: products at `2f`, one truncation, then the bias at `f` (BatchNorm is folded into `w`, `b`) | truncation on shares: `−1..0` ulp, plus a wrong (random) element with probability ≈ `|y|/2^64` (digest §6.7, §10.10) |
//! | `BlockRelu`, patch `(bh, bw)` | per patch, `s` = sum of its **in-bounds** pixels (patches tile from the top-left; a ragged edge patch is smaller, which is what summing the reference's zero-padded tiling gives); every pixel of the patch is kept iff `s > 0` (strict, as the reference's plaintext module; a secure DReLU gives `≥ 0`, so the backend tests `DReLU(s − 1)`), else 0 | exact decision on the exact sum (no division); approximate DReLU only within its window |
//! | `BlockRelu`, `(1, 1)` | `max(x, 0)` (the same as the patch rule with one pixel) | exact |
//! | `BlockRelu`, `Identity` / `Zero` | `x` / `0` (the plaintext meaning, digest §10.7) | exact |
//! | `Relu6` | `clamp(x, 0, 6 · 2^f)` | exact |
//! | `AvgPool` | `floor(window_sum / n)`, zero padding, `n = kh·kw` if `count_include_pad`, else the in-bounds count (PyTorch, `ceil_mode = false`) | division of each share: `−1..0` ulp (+ rare wrap as truncation) |
//! | `MaxPool` | max over the in-bounds window (padding is −∞) | exact |
//! | `GlobalAvgPool` | `floor(channel_sum / (H·W))` (H·W, not H+W: digest §10.3) | as `AvgPool` |
//! | `Add`, `Concat`, `Broadcast` | wrapping sum; channel concatenation; repetition of `[C,1,1]` | exact |
//!
//! Output: the last node's values; logits are decoded to `f32` (`v / 2^f`); the label (map) is
//! the per-pixel argmax over channels of the fixed-point values, the **lowest channel on ties**.
//!
//! Tolerance a secure backend is held to: with `T` truncating/dividing layers on a path, each
//! output may differ by the propagation of `≤ 1` ulp per such layer (amplified by the following
//! layers' weights), and block decisions whose sum lies within that error of 0 may flip.
//! Exact ops (everything else) must agree bit for bit given equal inputs.
//!
//! # Approximate DReLU
//!
//! [`evaluate_with`] computes the DReLU sites (block ReLUs, ReLU6, max pooling) the way the
//! SecureNN-style backend does, under exact, uniform or calibrated windows
//! ([`knapsec_core::drelu`]): ReLU6 as `ReLU(x) − ReLU(x − 6)`, max pooling as the secure
//! pairwise tree, each comparison through the window with wrap-around. The decisions equal
//! the secure ones bit for bit except in the band just below zero whose sign the ignored bits
//! decide (there the secure result depends on the helper's random mask; the emulation draws
//! a seeded stand-in with the same distribution). See [`approx`].
//!
//! # Modules
//! * [`approx`]: the DReLU sites under a window, as the secure backend computes them.
//! * [`eval`]: [`evaluate`] (output only), [`evaluate_trace`] (every node), [`eval_node`].
//! * [`float`]: the same graph in `f64`, for real-valued tolerance tests.
//! * [`backend`]: the `plain` [`knapsec_core::SecureBackend`] plugin (no privacy, see there).
//! * [`cases`]: the small graphs every secure backend is compared with this oracle on, with
//!   the bounds of the contract above.

pub mod approx;
pub mod backend;
pub mod cases;
pub mod error;
pub mod eval;
pub mod float;

pub use backend::{PlainBackend, PlainOptions};
pub use error::{PlainError, Result};
pub use eval::{
    DreluEmulation, PlainOutput, argmax_channels, block_relu, encode_input, eval_node, evaluate,
    evaluate_trace, evaluate_with,
};
pub use float::{FloatTensor, evaluate_f64};
