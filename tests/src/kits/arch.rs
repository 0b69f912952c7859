//! The architecture-adapter kit ([`knapsec_core::ArchAdapter`]).
//!
//! Rules checked by [`check`]:
//! 1. a usable name and a non-empty one-line description;
//! 2. `layer_table` answers for the options given, names the adapter itself, is not empty,
//!    has unique layer names and non-empty shapes, and is the same on a second call;
//! 3. every layer's candidates are non-empty, contain the ordinary ReLU `(1,1)` and identity,
//!    and never `Zero` (a reference import format only). Repeated shapes are allowed: the
//!    reference's presets repeat some (e.g. `8x14` in the 112x112 list), adapters that follow
//!    the reference keep them, and the knapsack merges options of equal cost;
//! 4. `cost` is the DReLU count `ceil(H/h)·ceil(W/w)` for patches and 0 for identity;
//! 5. the all-ReLU spec validates and costs exactly the table's DReLUs;
//! 6. an unknown `variant` option is refused with an error (not ignored).

use super::{KitResult, check_name, ensure};
use knapsec_core::arch::{ArchAdapter, ArchOptions};
use knapsec_core::block::BlockSize;
use knapsec_core::layer::{LayerTable, ReluLayer};
use knapsec_core::spec::BlockSpec;
use std::collections::HashSet;

/// Runs every rule of this kit on `arch` at `options`.
pub fn check(arch: &dyn ArchAdapter, options: &ArchOptions) -> KitResult {
    let name = arch.name();
    check_name("architecture", name)?;
    ensure(!arch.description().trim().is_empty(), || {
        format!("architecture {name:?}: empty description")
    })?;
    let table = check_table(arch, options)?;
    for layer in &table.layers {
        check_candidates(arch, layer)?;
    }
    check_uniform_spec(&table)?;
    check_refuses_unknown_variant(arch, options)
}

/// Rule 2; returns the table.
pub fn check_table(arch: &dyn ArchAdapter, options: &ArchOptions) -> Result<LayerTable, String> {
    let name = arch.name();
    let table = arch
        .layer_table(options)
        .map_err(|e| format!("architecture {name:?}: layer_table failed: {e}"))?;
    ensure(table.arch == name, || {
        format!(
            "architecture {name:?}: its layer table names architecture {:?}",
            table.arch
        )
    })?;
    ensure(!table.layers.is_empty(), || {
        format!("architecture {name:?}: empty layer table")
    })?;
    let mut seen = HashSet::new();
    for l in &table.layers {
        ensure(seen.insert(l.name.as_str()), || {
            format!("architecture {name:?}: layer {:?} appears twice", l.name)
        })?;
        ensure(!l.name.is_empty(), || {
            format!("architecture {name:?}: a layer has an empty name")
        })?;
        ensure(l.channels > 0 && l.height > 0 && l.width > 0, || {
            format!(
                "architecture {name:?}: layer {:?} has an empty shape {}x{}x{}",
                l.name, l.channels, l.height, l.width
            )
        })?;
    }
    let again = arch
        .layer_table(options)
        .map_err(|e| format!("architecture {name:?}: second layer_table failed: {e}"))?;
    ensure(again == table, || {
        format!("architecture {name:?}: two layer_table calls with the same options differ")
    })?;
    Ok(table)
}

/// Rules 3 and 4 for one layer.
pub fn check_candidates(arch: &dyn ArchAdapter, layer: &ReluLayer) -> KitResult {
    let name = arch.name();
    let at = || format!("architecture {name:?}, layer {:?}", layer.name);
    let cands = arch.candidates(layer);
    ensure(!cands.is_empty(), || format!("{}: no candidates", at()))?;
    for b in &cands {
        ensure(*b != BlockSize::Zero, || {
            format!("{}: `zero` is not a candidate (import format only)", at())
        })?;
        let expected = match *b {
            BlockSize::Patch { h, w } => {
                ensure(h >= 1 && w >= 1, || {
                    format!("{}: zero-sized patch {b}", at())
                })?;
                u64::from(layer.height.div_ceil(h)) * u64::from(layer.width.div_ceil(w))
            }
            BlockSize::Identity | BlockSize::Zero => 0,
        };
        let cost = arch.cost(*b, layer);
        ensure(cost == expected, || {
            format!(
                "{}: cost of {b} on a {}x{} map is {cost}, expected ceil(H/h)*ceil(W/w) = {expected}",
                at(),
                layer.height,
                layer.width
            )
        })?;
    }
    ensure(cands.contains(&BlockSize::RELU), || {
        format!("{}: candidates lack the ordinary ReLU 1x1", at())
    })?;
    ensure(cands.contains(&BlockSize::Identity), || {
        format!("{}: candidates lack identity", at())
    })
}

/// Rule 5.
pub fn check_uniform_spec(table: &LayerTable) -> KitResult {
    let spec = BlockSpec::uniform(table, BlockSize::RELU);
    spec.validate(table).map_err(|e| {
        format!(
            "architecture {:?}: the all-ReLU spec does not validate: {e}",
            table.arch
        )
    })?;
    ensure(spec.drelus(table) == table.drelus(), || {
        format!(
            "architecture {:?}: the all-ReLU spec costs {} DReLUs, the table {}",
            table.arch,
            spec.drelus(table),
            table.drelus()
        )
    })
}

/// Rule 6.
pub fn check_refuses_unknown_variant(arch: &dyn ArchAdapter, options: &ArchOptions) -> KitResult {
    let bad = ArchOptions {
        variant: Some("no-such-variant-of-any-architecture".into()),
        ..options.clone()
    };
    ensure(arch.layer_table(&bad).is_err(), || {
        format!(
            "architecture {:?}: an unknown variant was accepted instead of refused",
            arch.name()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::candidates;

    /// A correct adapter, and ways to break it.
    #[derive(Default)]
    struct Toy {
        duplicate_layer: bool,
        zero_candidate: bool,
        no_identity: bool,
        square_cost: bool,
        accepts_any_variant: bool,
    }

    impl ArchAdapter for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn description(&self) -> &str {
            "a toy"
        }
        fn layer_table(&self, o: &ArchOptions) -> knapsec_core::Result<LayerTable> {
            if o.variant.is_some() && !self.accepts_any_variant {
                return Err(knapsec_core::CoreError::Invalid("no variants".into()));
            }
            let second = if self.duplicate_layer { "a" } else { "b" };
            Ok(LayerTable {
                arch: "toy".into(),
                layers: vec![
                    ReluLayer::new("a", 2, 7, 5),
                    ReluLayer::new(second, 3, 3, 3),
                ],
            })
        }
        fn candidates(&self, l: &ReluLayer) -> Vec<BlockSize> {
            let mut c = candidates::generate(l.height, l.width, 3);
            if self.no_identity {
                c.retain(|b| *b != BlockSize::Identity);
            }
            if self.zero_candidate {
                c.push(BlockSize::Zero);
            }
            c
        }
        fn cost(&self, b: BlockSize, l: &ReluLayer) -> u64 {
            if self.square_cost {
                b.drelu_cost(l.height, l.height)
            } else {
                b.drelu_cost(l.height, l.width)
            }
        }
    }

    #[test]
    fn a_correct_adapter_passes() {
        check(&Toy::default(), &ArchOptions::default()).unwrap();
    }

    #[test]
    fn broken_adapters_fail_naming_the_rule() {
        let o = ArchOptions::default();
        let toy = |set: fn(&mut Toy)| {
            let mut t = Toy::default();
            set(&mut t);
            t
        };
        let broken = [
            (toy(|t| t.duplicate_layer = true), "appears twice"),
            (toy(|t| t.no_identity = true), "lack identity"),
            (toy(|t| t.square_cost = true), "ceil(H/h)*ceil(W/w)"),
            (toy(|t| t.accepts_any_variant = true), "unknown variant"),
        ];
        for (toy, rule) in &broken {
            let e = check(toy, &o).unwrap_err();
            assert!(e.contains(rule), "{e}");
        }
    }
}
