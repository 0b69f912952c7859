//! knapsec-runtime: what every secure backend shares (DESIGN §2, §5), so that a backend is
//! the protocol alone.
//!
//! * [`randomness`]: per-inference pair keys from the session keys and fresh contributions
//!   of every party (the exchange and the derivation).
//! * [`sim`]: all three parties of any [`SecureBackend`](knapsec_core::SecureBackend) as
//!   threads of one process over the metered in-memory transport, its phases (once per
//!   session, offline and online per inference) timed and metered apart: the harness behind
//!   `knapsec simulate`, `knapsec bench secure` and the conformance kit.
//! * [`handshake`]: the session hello (versions, backend, options, model hash) and the
//!   derivation of the session's PRG keys.
//! * [`deploy`]: the `deploy.ron` deployment config.
//! * [`party`]: the party driver behind `knapsec party`, over `knapsec-net`'s authenticated
//!   TCP transport (its errors are `knapsec-net`'s [`NetError`](knapsec_net::NetError)).
//! * [`error`]: the crate's error type.

pub mod batch;
pub mod deploy;
pub mod error;
pub mod handshake;
pub mod party;
pub mod randomness;
pub mod sim;

pub use deploy::Deployment;
pub use party::{Party, ServeOptions};

pub use error::RuntimeError;
pub use randomness::{CONTRIBUTION_LEN, InferenceKeys, Pair, exchange_contributions};
pub use sim::{PhaseReport, SimReport, process_cpu_seconds, run_backend, simulate, simulate_batch};
