//! knapsec-core: the data model and plugin traits every other knapsec crate builds on.
//!
//! * [`block`]: patch sizes ([`BlockSize`]) and their DReLU cost (digest §1.3, with true H and W).
//! * [`candidates`]: candidate patch sets, generated or the reference's presets (digest §1.4).
//! * [`distortion`]: distortion tables (safetensors), the distortion → knapsack artefact.
//! * [`layer`]: the ordered ReLU layer table of an architecture.
//! * [`spec`]: block specs (one patch size per channel), RON/JSON, validation.
//! * [`drelu`]: approximate DReLU windows, their semantics and their calibration from data.
//! * [`graph`]: the secure-model graph exported for secure inference (DESIGN §3);
//!   [`graph_build`] builds one without libtorch, with random weights for tests.
//! * [`idx`]: the IDX image format (MNIST), parsed without tch so that it can be fuzzed.
//! * [`arch`], [`knapsack`], [`backend`], [`transport`]: plugin traits (DESIGN §4, §5).
//! * [`netdesc`]: one network description (a DAG of ops, shapes inferred, one slot per ReLU)
//!   from which the layer table and the secure graph come (DESIGN §4).
//! * [`registry`]: built-in plugins collected with `inventory`, plus dynamically loaded ones.
//!
//! This crate depends on neither tch nor tokio.

pub mod arch;
pub mod backend;
pub mod block;
pub mod candidates;
pub mod distortion;
pub mod drelu;
pub mod error;
pub mod fsutil;
pub mod graph;
pub mod graph_build;
pub mod idx;
pub mod knapsack;
pub mod layer;
pub mod netdesc;
pub mod registry;
pub mod spec;
pub mod spec_pickle;
pub mod transport;

pub use arch::{ArchAdapter, ArchOptions};
pub use backend::{ExpectedCost, PartySession, SecureBackend, SessionJob};
pub use block::BlockSize;
pub use error::{CoreError, Result};
pub use knapsack::{KnapsackStrategy, McKpProblem, McKpSolution, Reduction};
pub use layer::{LayerTable, ReluLayer};
pub use registry::Registry;
pub use spec::BlockSpec;
pub use transport::{Role, Transport};

/// Re-exported so that plugin crates can register without naming `inventory` themselves.
pub use inventory;
