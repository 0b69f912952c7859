//! One module per area of the CLI; each has its `Args` (with subcommands where the area has
//! several) and a `run(args, ctx)`.

pub mod arch;
pub mod bench;
pub mod calibrate;
#[cfg(feature = "torch")]
pub mod distortion;
pub mod keys;
pub mod knapsack;
pub mod netbench;
pub mod party;
#[cfg(feature = "torch")]
pub mod pipeline;
pub mod plugins;
pub mod simulate;
pub mod spec;
#[cfg(feature = "torch")]
pub mod train;
