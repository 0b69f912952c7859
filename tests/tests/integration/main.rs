//! knapsec integration tests: the registry of built-ins, dynamic plugins through the C ABI,
//! every plugin through its conformance kit, and the documentation's links.

mod dynamic;
mod kits;
mod knapsack;
mod links;
mod registry;
