//! End-to-end tests of the `knapsec` binary, in one test binary (each test binary links
//! libtorch through the plugins, so one binary links it once): one module per command family.

mod calibrate;
mod cli;
mod deploy;
mod knapsack;
mod netns;
mod pipeline;
mod secure_onnx;
mod slurm;
mod support;
