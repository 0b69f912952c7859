//! knapsec-net: the [`Transport`](knapsec_core::Transport) implementations of DESIGN §5.
//!
//! * [`memory`]: three endpoints joined by in-process channels (tests, `knapsec simulate`).
//! * [`metered`]: a decorator counting bytes, messages and rounds per pair, layer and op.
//! * [`frame`], [`keys`], [`error`]: framing, key files and errors of the TCP deployment.
//! * [`secure_channel`]: Noise-authenticated, encrypted connections between two parties.
//! * [`tcp`]: the TCP transport (tokio tasks behind the blocking `Transport` trait).
//! * [`delay`]: a TCP relay adding one-way delay, for latency benchmarks.
//!
//! The session hello, the deployment config and the party driver that use these transports
//! live in `knapsec-runtime`, shared by every backend.

pub mod delay;
pub mod error;
pub mod frame;
pub mod keys;
pub mod memory;
pub mod metered;
pub mod secure_channel;
pub mod tcp;

pub use error::NetError;
pub use memory::{MemoryTransport, memory_network};
pub use metered::{CommReport, Counts, Metered, RoundTracker};
pub use tcp::TcpTransport;
