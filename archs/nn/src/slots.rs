//! Named activation slots (digest §4.1 `get_layer`/`set_layer`, §8 step 3).
//!
//! Every ReLU of a block-structured network sits in its own named slot (the reference's layer
//! name, e.g. `layer1_0_1`). A slot remembers its original activation (ReLU or ReLU6), the block
//! it lives in, and its layer shape; its current [`Activation`] can be swapped at any time:
//! plain ReLU, a [`BlockRelu`] with one block size per channel, or identity.

use crate::block_relu::{BlockRelu, relu6};
use crate::error::{NnError, Result};
use knapsec_core::{BlockSize, BlockSpec, LayerTable, ReluLayer};
use std::collections::HashMap;
use tch::Tensor;

/// The activation a slot had when the network was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNetV2's original activation).
    Relu6,
}

/// What a slot currently computes.
#[derive(Debug)]
pub enum Activation {
    /// Ordinary ReLU.
    Relu,
    /// ReLU6.
    Relu6,
    /// No activation: the input passes through.
    Identity,
    /// A block ReLU (one block size per channel).
    Block(BlockRelu),
}

impl Activation {
    /// Applies the activation.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::Relu6 => relu6(x),
            Activation::Identity => x.shallow_clone(),
            Activation::Block(b) => b.forward_unchecked(x),
        }
    }

    fn of_kind(kind: SlotKind) -> Self {
        match kind {
            SlotKind::Relu => Activation::Relu,
            SlotKind::Relu6 => Activation::Relu6,
        }
    }
}

/// Handle of a slot, returned by [`Slots::add`]; networks keep it to run the slot quickly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(pub usize);

/// One activation slot.
#[derive(Debug)]
pub struct Slot {
    /// The layer: name (as in the reference), channels, true height and width.
    pub layer: ReluLayer,
    /// Index of the network block the slot lives in (distortion runs from there).
    pub block: usize,
    /// The activation the network was built with.
    pub kind: SlotKind,
    /// The activation now in the slot.
    pub act: Activation,
}

/// All activation slots of a network, in network order.
#[derive(Debug)]
pub struct Slots {
    arch: String,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    tap: SlotTap,
}

/// A hook on slot execution (used by the distortion engine, [`crate::distortion`]): called with
/// the slot and its input before the slot runs; `Some(y)` replaces the slot's output.
pub type SlotTapFn = Box<dyn FnMut(SlotId, &Tensor) -> Option<Tensor> + Send>;

/// The installed [`SlotTapFn`], if any.
#[derive(Default)]
struct SlotTap(std::cell::RefCell<Option<SlotTapFn>>);

impl std::fmt::Debug for SlotTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            if self.0.try_borrow().map(|t| t.is_some()).unwrap_or(true) {
                "SlotTap(set)"
            } else {
                "SlotTap(none)"
            },
        )
    }
}

impl Slots {
    /// No slots yet, for architecture `arch`.
    pub fn new(arch: impl Into<String>) -> Self {
        Slots {
            arch: arch.into(),
            slots: Vec::new(),
            index: HashMap::new(),
            tap: SlotTap::default(),
        }
    }

    /// Adds a slot for `layer`, living in block `block`, built with activation `kind`.
    pub fn add(&mut self, layer: ReluLayer, block: usize, kind: SlotKind) -> Result<SlotId> {
        if self.index.contains_key(&layer.name) {
            return Err(NnError::DuplicateLayer { layer: layer.name });
        }
        self.index.insert(layer.name.clone(), self.slots.len());
        self.slots.push(Slot {
            layer,
            block,
            kind,
            act: Activation::of_kind(kind),
        });
        Ok(SlotId(self.slots.len() - 1))
    }

    /// Runs slot `id` on `x`.
    pub fn run(&self, id: SlotId, x: &Tensor) -> Tensor {
        if let Ok(mut tap) = self.tap.0.try_borrow_mut()
            && let Some(f) = tap.as_mut()
            && let Some(y) = f(id, x)
        {
            return y;
        }
        self.slots[id.0].act.forward(x)
    }

    /// Installs (or with `None` removes) the tap every [`Slots::run`] consults; returns the
    /// previous one.
    pub fn set_tap(&self, tap: Option<SlotTapFn>) -> Option<SlotTapFn> {
        std::mem::replace(&mut *self.tap.0.borrow_mut(), tap)
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the network has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slots in network order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Layer names in network order.
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.layer.name.as_str()).collect()
    }

    /// The slot of `layer`.
    pub fn get(&self, layer: &str) -> Result<&Slot> {
        self.id(layer).map(|id| &self.slots[id.0])
    }

    /// The handle of `layer`'s slot.
    pub fn id(&self, layer: &str) -> Result<SlotId> {
        self.index
            .get(layer)
            .map(|&i| SlotId(i))
            .ok_or_else(|| NnError::UnknownLayer {
                arch: self.arch.clone(),
                layer: layer.to_string(),
            })
    }

    /// The layer table of the slots (shapes at the size the network was built for).
    pub fn layer_table(&self) -> Result<LayerTable> {
        Ok(LayerTable::new(
            self.arch.clone(),
            self.slots.iter().map(|s| s.layer.clone()).collect(),
        )?)
    }

    /// Puts `act` into `layer`'s slot; a block ReLU must have the layer's channel count.
    pub fn set(&mut self, layer: &str, act: Activation) -> Result<()> {
        let id = self.id(layer)?;
        let slot = &mut self.slots[id.0];
        if let Activation::Block(b) = &act
            && b.channels() != slot.layer.channels as usize
        {
            return Err(NnError::WrongChannelCount {
                layer: layer.to_string(),
                expected: slot.layer.channels as usize,
                found: b.channels(),
            });
        }
        slot.act = act;
        Ok(())
    }

    /// Puts a block ReLU with `blocks` (one per channel) into `layer`'s slot. All-`(1,1)` lists
    /// become a plain ReLU, all-identity lists identity.
    pub fn set_blocks(&mut self, layer: &str, blocks: &[BlockSize]) -> Result<()> {
        let act = if blocks.iter().all(|b| b.is_relu()) {
            Activation::Relu
        } else if blocks.iter().all(|b| *b == BlockSize::Identity) {
            Activation::Identity
        } else {
            Activation::Block(BlockRelu::new(blocks.to_vec())?)
        };
        let expected = self.get(layer)?.layer.channels as usize;
        if blocks.len() != expected {
            return Err(NnError::WrongChannelCount {
                layer: layer.to_string(),
                expected,
                found: blocks.len(),
            });
        }
        self.set(layer, act)
    }

    /// Applies every layer of `spec` (layers the spec does not name keep their activation).
    /// The spec's architecture must match unless it is empty (reference pickles carry none);
    /// every layer must exist and have the right channel count. Nothing changes on error.
    pub fn apply_spec(&mut self, spec: &BlockSpec) -> Result<()> {
        if !spec.arch.is_empty() && spec.arch != self.arch {
            return Err(knapsec_core::CoreError::WrongArchitecture {
                expected: self.arch.clone(),
                found: spec.arch.clone(),
            }
            .into());
        }
        for (layer, blocks) in &spec.layers {
            let expected = self.get(layer)?.layer.channels as usize;
            if blocks.len() != expected {
                return Err(NnError::WrongChannelCount {
                    layer: layer.clone(),
                    expected,
                    found: blocks.len(),
                });
            }
        }
        for (layer, blocks) in &spec.layers {
            self.set_blocks(layer, blocks)?;
        }
        Ok(())
    }

    /// Puts every slot back to its original activation.
    pub fn reset(&mut self) {
        for s in &mut self.slots {
            s.act = Activation::of_kind(s.kind);
        }
    }

    /// The block sizes `layer` currently computes, or `None` for ReLU6 (which no block list
    /// expresses).
    pub fn current_blocks(&self, layer: &str) -> Result<Option<Vec<BlockSize>>> {
        let slot = self.get(layer)?;
        let c = slot.layer.channels as usize;
        Ok(match &slot.act {
            Activation::Relu => Some(vec![BlockSize::RELU; c]),
            Activation::Identity => Some(vec![BlockSize::Identity; c]),
            Activation::Block(b) => Some(b.blocks().to_vec()),
            Activation::Relu6 => None,
        })
    }

    /// The current activations as a block spec (ReLU6 slots are left out).
    pub fn to_spec(&self) -> BlockSpec {
        let mut spec = BlockSpec::new(self.arch.clone());
        for s in &self.slots {
            if let Ok(Some(blocks)) = self.current_blocks(&s.layer.name) {
                spec.layers.insert(s.layer.name.clone(), blocks);
            }
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn swap_and_reset() {
        let mut slots = Slots::new("toy");
        let a = slots
            .add(ReluLayer::new("a", 2, 4, 4), 0, SlotKind::Relu)
            .unwrap();
        slots
            .add(ReluLayer::new("b", 3, 2, 2), 1, SlotKind::Relu6)
            .unwrap();
        assert!(
            slots
                .add(ReluLayer::new("a", 2, 4, 4), 0, SlotKind::Relu)
                .is_err()
        );
        let x = Tensor::from_slice(&[-1.0f32, 2.0]).view([1, 2, 1, 1]);
        assert_eq!(
            Vec::<f32>::try_from(slots.run(a, &x).flatten(0, -1)).unwrap(),
            vec![0.0, 2.0]
        );
        slots.set("a", Activation::Identity).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(slots.run(a, &x).flatten(0, -1)).unwrap(),
            vec![-1.0, 2.0]
        );
        assert!(matches!(
            slots.set_blocks("a", &[BlockSize::RELU]),
            Err(NnError::WrongChannelCount { .. })
        ));
        assert!(matches!(
            slots.set("zz", Activation::Relu),
            Err(NnError::UnknownLayer { .. })
        ));

        let mut spec = BlockSpec::new("toy");
        spec.layers.insert(
            "a".into(),
            vec![BlockSize::Patch { h: 2, w: 2 }, BlockSize::Identity],
        );
        slots.apply_spec(&spec).unwrap();
        assert_eq!(slots.to_spec().layers["a"], spec.layers["a"]);
        assert!(
            !slots.to_spec().layers.contains_key("b"),
            "ReLU6 slots have no block list"
        );
        let mut bad = spec.clone();
        bad.layers.insert("b".into(), vec![BlockSize::RELU; 2]);
        assert!(slots.apply_spec(&bad).is_err());
        bad.arch = "other".into();
        assert!(slots.apply_spec(&bad).is_err());
        slots.reset();
        assert_eq!(
            slots.current_blocks("a").unwrap(),
            Some(vec![BlockSize::RELU; 2])
        );
        let y = slots.run(
            SlotId(1),
            &Tensor::full([1, 3, 2, 2], 9.0, (Kind::Float, Device::Cpu)),
        );
        assert_eq!(f64::try_from(y.max()).unwrap(), 6.0);
        assert_eq!(slots.layer_table().unwrap().drelus(), 32 + 12);
    }
}
