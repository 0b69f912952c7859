//! knapsec-fss: three-party secure inference in which the helper deals function-secret-sharing
//! keys, as the `fss` [`SecureBackend`](knapsec_core::SecureBackend).
//!
//! Same roles and threat model as `securenn` (client: input, learns the output; server:
//! weights; helper: deals correlated randomness, learns nothing; semi-honest, the helper
//! colludes with neither). Every sign test is a distributed comparison function
//! ([`dcf`], Boyle et al., Eurocrypt 2021) whose keys the helper deals offline; online,
//! client and server open each ReLU layer's values masked once, evaluate the comparisons
//! locally and open the masked decision bits, and the selection (a patch's bit times each of
//! its pixels) is then local ([`gate`]). Linear layers cost no online message ([`exec`]).
//! `docs/protocol.md` describes the protocol and its costs.
//!
//! * [`dcf`]: the DCF (AES-based PRG, batched key generation and evaluation).
//! * [`gate`]: the selection gate behind ReLU, block ReLU, ReLU6, max pooling and argmax.
//! * [`exec`]: the plan, offline and online phases of a whole graph.
//! * [`backend`]: the registered backend.
//! * [`sim`]: all three parties in one process, phase by phase (tests, figures).

pub mod backend;
pub mod dcf;
pub mod error;
pub mod exec;
pub mod gate;
pub mod sim;

pub use backend::Fss;
pub use error::{FssError, Result};
pub use exec::{ClosedForm, Plan, Session};
pub use sim::{SimReport, simulate};
