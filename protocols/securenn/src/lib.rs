//! knapsec-securenn: three-party secure inference in the style of SecureNN / the paper's
//! reference (digest §6), as the `securenn` [`SecureBackend`](knapsec_core::SecureBackend).
//!
//! Client (input, learns the output), server (weights) and helper (correlated randomness,
//! learns nothing); semi-honest; additive shares over Z_2^64; fixed point with the model's
//! `frac_bits`.
//!
//! * [`ctx`]: a party's context: transport, pairwise PRGs per session and per inference.
//! * [`linear`]: convolutions and fully connected layers with the weights masked once per
//!   session, truncation.
//! * [`select`]: exact and approximate DReLU fused with the selection `b·v` (ReLU, block
//!   ReLU, ReLU6, max pooling, argmax); its PrivateCompare arithmetic in vector lanes
//!   (`compare`, private).
//! * [`exec`]: the graph executor with its setup / offline / online phases.
//! * [`backend`]: the registered backend (one party per call, over any transport).
//! * [`sim`]: all three parties in one process over the metered in-memory transport.
//! * [`options`]: RON options.
//! * [`profile`]: CPU time by op kind (linear, comparison, selection, pooling, PRG).
//! * [`nets`]: synthetic ResNet18-CIFAR-shaped and DeepLab-like graphs for tests and benches.

pub mod backend;
mod compare;
pub mod ctx;
pub mod error;
pub mod exec;
pub mod linear;
pub mod nets;
pub mod options;
pub mod profile;
pub mod select;
pub mod sim;

pub use backend::SecureNn;
pub use error::{Result, SecureNnError};
pub use exec::{Plan, Session};
pub use options::{DreluMode, Options, Reveal};
pub use sim::{SimReport, simulate};
