//! knapsec-tests: conformance kits and the helpers of the integration tests (DESIGN §6).
//!
//! * [`kits`]: one kit per plugin trait. Every implementation (built-in or dynamic) is run
//!   through its kit by `tests/kits.rs`; plugin authors call the kits from their own tests.
//! * [`fixtures`]: building the dynamic-plugin libraries (the example plugin and the faulty
//!   fixtures under `tests/fixtures/plugins`) and locating the committed fixture files.
//!
//! The registry tests live here, not in `knapsec-core`: a unit test inside core sees a second
//! copy of core whose registry is empty.

pub mod fixtures;
pub mod kits;

// Name the facade so that every built-in is linked into the test binaries.
use knapsec_builtin as _;
