//! knapsec-nn's integration tests, in one test binary (each binary links libtorch, so one
//! binary links it once): one module per topic.

mod block_relu_golden;
mod data_loaders;
mod smoke;
