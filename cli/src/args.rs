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

/// The secure inference both `bench secure` and `bench net` measure: an architecture's secure
/// graph with a random block spec at a DReLU budget, run by a backend.
#[derive(Debug, Clone, Args)]
pub struct SecureBenchArgs {
    /// Any registered architecture whose adapter builds its secure graph without libtorch
    /// (`knapsec arch list`), e.g. `resnet18-cifar`, `resnet50-imagenet`,
    /// `mobilenetv2-imagenet`.
    #[arg(long, default_value = "resnet18-cifar")]
    pub arch: String,
    /// Architecture variant (e.g. `avgpool-stem` for resnet50-imagenet, the reference's secure
    /// flows; its default stem uses max pooling).
    #[arg(long)]
    pub variant: Option<String>,
    /// The secure backend (`knapsec plugins list`); `knapsec party` refuses a non-private one.
    #[arg(long, default_value = "securenn")]
    pub backend: String,
    /// DReLU budget: a percentage (`6%`) or a fraction (`0.06`) of the all-ReLU count.
    #[arg(long, default_value = "6%")]
    pub budget: String,
    /// DReLU of the securenn backend: `exact` or `approx:BITS[,LSB_IGNORED]`.
    #[arg(long, default_value = "exact")]
    pub drelu: String,
    /// Options of another backend (RON text).
    #[arg(long, default_value = "")]
    pub options: String,
}
