//! knapsec-arch-resnet's integration tests, in one test binary (each binary links libtorch,
//! so one binary links it once): one module per topic.

mod distortion;
mod net;
mod train;
