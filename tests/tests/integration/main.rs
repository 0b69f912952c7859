//! knapsec integration tests: the registry of built-ins, dynamic plugins through the C ABI,
//! and every plugin through its conformance kit.

mod dynamic;
mod kits;
mod knapsack;
mod registry;
