//! knapsec-net: the [`Transport`](knapsec_core::Transport) implementations of DESIGN §5.
//!
//! * [`memory`]: three endpoints joined by in-process channels (tests, `knapsec simulate`).
//! * [`metered`]: a decorator counting bytes, messages and rounds per pair, layer and op.
//! * [`frame`], [`keys`], [`error`]: framing, key files and errors of the TCP deployment.
//! * [`secure_channel`]: Noise-authenticated, encrypted connections between two parties.
//! * [`tcp`]: the TCP transport (tokio tasks behind the blocking `Transport` trait).
//! * [`handshake`]: the session hello (versions, backend, options, model hash) and the
//!   derivation of the session's PRG keys.
//! * [`deploy`]: the `deploy.ron` deployment config.
//! * [`party`]: the party driver behind `knapsec party`.
//! * [`delay`]: a TCP relay adding one-way delay, for latency benchmarks.

pub mod delay;
pub mod deploy;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod keys;
pub mod memory;
pub mod metered;
pub mod party;
pub mod secure_channel;
pub mod tcp;

pub use deploy::Deployment;
pub use error::NetError;
pub use memory::{MemoryTransport, memory_network};
pub use metered::{CommReport, Counts, Metered, RoundTracker};
pub use party::{Party, ServeOptions};
pub use tcp::TcpTransport;
