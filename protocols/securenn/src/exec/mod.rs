//! The graph executor: runs a whole [`SecureModel`](knapsec_core::graph::SecureModel) for one
//! party, in three phases (DESIGN §5, digest §6.4, §6.7, §6.11, §6.14):
//!
//! * [`Session::setup`] (once per session): the server sends its masked weights to the
//!   helper ([`crate::linear`]).
//! * [`Session::offline`] (per inference, before the input exists): linear-layer masks and
//!   the helper's `conv(A, F)`, selection masks and PrivateCompare bit shares
//!   ([`crate::select`]).
//! * [`Session::online`]: the input is shared (client share `X − R`, server share `R` from
//!   their common PRG, no message), every node runs on shares, and the output is revealed to
//!   the client only: its logits, or just the label (map) by a secure argmax.
//!
//! The parts: `plan` turns the graph into public per-node work (the same on all three
//! parties) and the closed-form byte counts; `offline` holds the session (weights, set-up)
//! and the per-inference preprocessing; `online` runs the nodes on shares and reveals the
//! output; `tournament` is the pairwise knock-out behind both max pooling and the argmax;
//! [`ops`] the share-local parts of the ops. The plan, the tournament and the ops are
//! public: the `fss` backend runs the same plan and schedule with its own gates.
//!
//! Fixed-point semantics per op (the same as `knapsec-plain`, up to the stated errors):
//! linear layers compute the product at `2f` fractional bits, truncate by `f` (local shift,
//! error `−1..0` ulp, see [`crate::linear`]) and add the bias; a block ReLU keeps a patch
//! iff its sum is `> 0`; ReLU6 is `ReLU(x) − ReLU(x − 6)`; average pooling and global
//! average pooling floor-divide the window sum by the divisor on each share (error `−1..0`
//! ulp; the same rare wrap event as truncation); max pooling is a tree of `b + ReLU(a − b)`
//! over the window's taps (edge padding); add, concat and broadcast are local and exact.
//! The secure argmax keeps the lower index on ties and always uses exact DReLUs (a wrapped
//! approximate comparison would pick a wrong label).

mod offline;
mod online;
pub mod ops;
mod plan;
mod tournament;

pub use offline::{Preprocessing, Session};
pub use plan::{NodePlan, Plan};
pub use tournament::Tournament;
