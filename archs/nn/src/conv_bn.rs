//! Building blocks every built-in tch network shares: a convolution followed by BatchNorm
//! under PyTorch `state_dict` names (digest §4.2–§4.5: every backbone is made of them), and the
//! `nn::Path` of a dotted `state_dict` prefix.

use crate::Result;
use crate::net::ChannelChange;
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// The `nn::Path` of a dotted `state_dict` prefix (`features.1.conv.0.0`) under `root`.
pub fn sub_path<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let first = root.sub(parts.next().unwrap_or_default());
    parts.fold(first, |p, s| p.sub(s))
}

/// A convolution without bias followed by a BatchNorm (eps 1e-5), under `state_dict` names.
#[derive(Debug)]
pub struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
}

impl ConvBn {
    /// A `k × k` convolution `cin → cout` named `conv` with the given stride, padding,
    /// dilation and groups, and its BatchNorm named `bn` (dotted names under `root`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: &nn::Path,
        conv: &str,
        bn: &str,
        cin: u32,
        cout: u32,
        k: u32,
        stride: u32,
        padding: u32,
        dilation: u32,
        groups: u32,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride: stride.into(),
            padding: padding.into(),
            dilation: dilation.into(),
            groups: groups.into(),
            bias: false,
            ..Default::default()
        };
        ConvBn {
            conv: nn::conv2d(sub_path(root, conv), cin.into(), cout.into(), k.into(), cfg),
            bn: nn::batch_norm2d(sub_path(root, bn), cout.into(), Default::default()),
            stride: stride.into(),
            padding: padding.into(),
            dilation: dilation.into(),
            groups: groups.into(),
        }
    }

    /// `bn(conv(x))`, BatchNorm in training mode when `train`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), train)
    }

    /// The convolution alone (`conv(x)`, what [`Self::forward_changed`] is given).
    pub fn conv(&self, x: &Tensor) -> Tensor {
        x.apply(&self.conv)
    }

    /// Whether [`Self::forward_changed`] applies (no dilation, no groups).
    pub fn updates_by_channel(&self) -> bool {
        self.dilation == 1 && self.groups == 1
    }

    /// [`Self::forward`] (evaluation mode) on the rows of `change`, given the convolution of
    /// its clean rows: each row adds only its changed channel's contribution
    /// ([`ChannelChange::conv2d`]). Only for a convolution that [`Self::updates_by_channel`].
    pub fn forward_changed(
        &self,
        change: &ChannelChange<'_>,
        clean_conv: &Tensor,
    ) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        let z = change.conv2d(clean_conv, &self.conv.ws, [s, s], [p, p])?;
        Ok(self.bn.forward_t(&z, false))
    }
}
