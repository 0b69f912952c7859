//! knapsec-arch-kit: what the built-in architectures share, without tch (DESIGN §2, §4).
//!
//! * [`plan_adapter!`]: an architecture's `ArchAdapter` (name, description, layer table,
//!   candidates, secure graph) and its registration in core's registry, from its plan.
//! * [`desc`]: helpers for builders of network descriptions (conv + BatchNorm, activations).
//! * [`options`]: the option checks every plan makes (positive sizes, maps that fit).
//! * [`spec`]: block-spec checks against a layer list and the activation node of a layer.
//! * [`reference_candidates`]: the reference's candidate preset for a map side (digest §1.4).
//! * [`resnet`]: the one ResNet plan (digest §4.2, §4.3, §4.5, §5): `resnet18-cifar`,
//!   `resnet50-imagenet` and the dilated ResNet-50 V1c backbone of `deeplabv3-resnet50`.
//!
//! The crate never sees tch, so the tch-free stages (and crates that must stay tch-free, such
//! as the knapsack plugin) can take shapes from it.

pub mod desc;
pub mod options;
pub mod resnet;
pub mod spec;

use knapsec_core::{BlockSize, ReluLayer, candidates};

pub use spec::{activation_node, check_spec_layers};

/// The reference's candidate list for a layer: its preset for the map side when the map is
/// square and a preset of that side exists (digest §1.4, §4.4, §4.5), otherwise every patch up
/// to 16 per side plus identity.
pub fn reference_candidates(layer: &ReluLayer) -> Vec<BlockSize> {
    if layer.height == layer.width
        && let Ok(preset) = candidates::preset_for_side(layer.height)
    {
        return preset;
    }
    candidates::generate(layer.height, layer.width, 16)
}

/// What [`plan_adapter!`] expands to refers to (not a public API).
#[doc(hidden)]
pub mod __private {
    pub use knapsec_core;
    pub use knapsec_core::inventory;
    pub use knapsec_core::registry::ArchRegistration;
    pub use std::sync::Arc;
}

/// Declares an architecture adapter (a unit struct implementing `knapsec_core::ArchAdapter`)
/// and registers it in core's registry, from the architecture's plan: `plan` names the plan's
/// type and builds it at the given options (`Plan = |options| Plan::new(NAME, options)`); the
/// plan has
/// `layer_table(&self) -> Result<LayerTable>` and `secure_graph(&self, spec, frac_bits) ->
/// Result<(SecureModel, Vec<ParamSource>)>`. `candidates` is optional (the trait's default
/// generates every patch up to 16 per side).
///
/// ```ignore
/// knapsec_arch_kit::plan_adapter! {
///     /// `example-tinycnn`'s adapter.
///     pub struct TinyCnn {
///         name: NAME,
///         provider: "knapsec-arch-example",
///         description: "Example: 2 conv + 2 ReLU + linear",
///         plan: TinyCnnPlan = |options| TinyCnnPlan::new(options),
///     }
/// }
/// ```
#[macro_export]
macro_rules! plan_adapter {
    (
        $(#[$meta:meta])*
        $vis:vis struct $adapter:ident {
            name: $name:expr,
            provider: $provider:expr,
            description: $description:expr,
            plan: $ty:ty = |$options:ident| $plan:expr
            $(, candidates: $candidates:path)?
            $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default)]
        $vis struct $adapter;

        impl $adapter {
            fn plan_at(
                $options: &$crate::__private::knapsec_core::ArchOptions,
            ) -> $crate::__private::knapsec_core::Result<$ty> {
                $plan
            }
        }

        impl $crate::__private::knapsec_core::ArchAdapter for $adapter {
            fn name(&self) -> &str {
                $name
            }

            fn description(&self) -> &str {
                $description
            }

            fn layer_table(
                &self,
                options: &$crate::__private::knapsec_core::ArchOptions,
            ) -> $crate::__private::knapsec_core::Result<$crate::__private::knapsec_core::LayerTable> {
                Self::plan_at(options)?.layer_table()
            }

            fn secure_graph(
                &self,
                options: &$crate::__private::knapsec_core::ArchOptions,
                spec: Option<&$crate::__private::knapsec_core::BlockSpec>,
                frac_bits: u32,
            ) -> $crate::__private::knapsec_core::Result<Option<$crate::__private::knapsec_core::graph::SecureModel>> {
                Ok(Some(Self::plan_at(options)?.secure_graph(spec, frac_bits)?.0))
            }

            $(
                fn candidates(
                    &self,
                    layer: &$crate::__private::knapsec_core::ReluLayer,
                ) -> Vec<$crate::__private::knapsec_core::BlockSize> {
                    $candidates(layer)
                }
            )?
        }

        $crate::__private::inventory::submit! {
            $crate::__private::ArchRegistration {
                name: $name,
                provider: $provider,
                make: || $crate::__private::Arc::new($adapter),
            }
        }
    };
}
