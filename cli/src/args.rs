//! Argument groups shared by several commands.

use clap::Args;
use knapsec_core::ArchOptions;
use std::path::PathBuf;

/// Options of an architecture (`knapsec_core::ArchOptions`); unset ones take the
/// architecture's defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct ArchOptionArgs {
    /// Input height and width in pixels.
    #[arg(long, num_args = 2, value_names = ["H", "W"])]
    pub input_size: Option<Vec<u32>>,
    /// Input channels (3 for RGB, 1 for greyscale).
    #[arg(long, value_name = "C")]
    pub input_channels: Option<u32>,
    /// Number of output classes.
    #[arg(long, value_name = "N")]
    pub classes: Option<u32>,
    /// Base width (channels of the first stage), for architectures that scale.
    #[arg(long, value_name = "N")]
    pub base_width: Option<u32>,
    /// Architecture-specific variant.
    #[arg(long, value_name = "NAME")]
    pub variant: Option<String>,
    /// Read the options from a RON file (`(input_height: Some(32), ...)`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub arch_options: Option<PathBuf>,
}

impl ArchOptionArgs {
    /// The options these flags describe.
    pub fn to_options(&self) -> anyhow::Result<ArchOptions> {
        let mut o = match &self.arch_options {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                ron::from_str::<ArchOptions>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => ArchOptions::default(),
        };
        if let Some(hw) = &self.input_size {
            o.input_height = Some(hw[0]);
            o.input_width = Some(hw[1]);
        }
        o.input_channels = self.input_channels.or(o.input_channels);
        o.classes = self.classes.or(o.classes);
        o.base_width = self.base_width.or(o.base_width);
        if self.variant.is_some() {
            o.variant = self.variant.clone();
        }
        Ok(o)
    }
}
