//! Block specs against a plan's layers (DESIGN §3: a spec made for another architecture, naming
//! a layer the network lacks, or with the wrong channel count is refused naming it), and the
//! secure-graph node of one activation layer.

use knapsec_core::graph::{Op, SecureModel};
use knapsec_core::graph_build::{GraphBuilder, NodeId};
use knapsec_core::{BlockSize, BlockSpec, CoreError, ReluLayer, Result};

/// Checks that `spec` is for `arch` (or names no architecture), that every layer it names is
/// in `layers`, and that each has one block size per channel.
pub fn check_spec_layers(arch: &str, layers: &[ReluLayer], spec: Option<&BlockSpec>) -> Result<()> {
    let Some(spec) = spec else { return Ok(()) };
    if !spec.arch.is_empty() && spec.arch != arch {
        return Err(CoreError::WrongArchitecture {
            expected: arch.into(),
            found: spec.arch.clone(),
        });
    }
    for (name, blocks) in &spec.layers {
        let layer =
            layers
                .iter()
                .find(|l| &l.name == name)
                .ok_or_else(|| CoreError::UnknownLayer {
                    arch: arch.into(),
                    layer: name.clone(),
                })?;
        check_channels(layer, blocks)?;
    }
    Ok(())
}

fn check_channels(layer: &ReluLayer, blocks: &[BlockSize]) -> Result<()> {
    if blocks.len() != layer.channels as usize {
        return Err(CoreError::WrongChannelCount {
            layer: layer.name.clone(),
            expected: layer.channels as usize,
            found: blocks.len(),
        });
    }
    Ok(())
}

/// Adds `layer`'s activation on `x` to a secure graph: a block ReLU with `spec`'s block sizes
/// for the layer when it names it, otherwise the network's own activation (ReLU6 when
/// `relu6`, else ReLU).
pub fn activation_node(
    g: &mut GraphBuilder,
    layer: &ReluLayer,
    x: NodeId,
    spec: Option<&BlockSpec>,
    relu6: bool,
) -> Result<NodeId> {
    match spec.and_then(|s| s.layers.get(&layer.name)) {
        Some(blocks) => {
            check_channels(layer, blocks)?;
            g.block_relu(&layer.name, x, blocks.clone())
        }
        None if relu6 => g.relu6(&layer.name, x),
        None => g.block_relu(
            &layer.name,
            x,
            vec![BlockSize::RELU; layer.channels as usize],
        ),
    }
}

/// The activation nodes of a secure model (block ReLUs and ReLU6s) as `(layer, [C, H, W])`, in
/// graph order: what [`layer_shapes`] of the architecture's layer table must equal (DESIGN §4:
/// the layer table and the secure graph agree).
pub fn graph_activations(model: &SecureModel) -> Vec<(String, [u32; 3])> {
    model
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::BlockRelu { layer, .. } | Op::Relu6 { layer } => Some((layer.clone(), n.shape)),
            _ => None,
        })
        .collect()
}

/// The layers as `(name, [C, H, W])`, to compare with [`graph_activations`].
pub fn layer_shapes(layers: &[ReluLayer]) -> Vec<(String, [u32; 3])> {
    layers
        .iter()
        .map(|l| (l.name.clone(), [l.channels, l.height, l.width]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_against_the_layers() {
        let layers = [ReluLayer::new("a", 2, 4, 4), ReluLayer::new("b", 3, 2, 2)];
        let mut spec = BlockSpec::new("net");
        spec.layers.insert("b".into(), vec![BlockSize::RELU; 3]);
        check_spec_layers("net", &layers, Some(&spec)).unwrap();
        check_spec_layers("net", &layers, None).unwrap();
        let e = check_spec_layers("other", &layers, Some(&spec)).unwrap_err();
        assert!(matches!(e, CoreError::WrongArchitecture { .. }), "{e}");
        spec.layers.insert("b".into(), vec![BlockSize::RELU; 2]);
        let e = check_spec_layers("net", &layers, Some(&spec)).unwrap_err();
        assert!(
            matches!(e, CoreError::WrongChannelCount { found: 2, .. }),
            "{e}"
        );
        spec.layers.clear();
        spec.layers.insert("c".into(), vec![]);
        let e = check_spec_layers("net", &layers, Some(&spec)).unwrap_err();
        assert!(e.to_string().contains("c"), "{e}");
    }

    #[test]
    fn activation_nodes_follow_the_spec() {
        let layers = [ReluLayer::new("a", 2, 4, 4), ReluLayer::new("b", 2, 4, 4)];
        let mut spec = BlockSpec::new("net");
        spec.layers
            .insert("b".into(), vec![BlockSize::Patch { h: 2, w: 2 }; 2]);
        let mut g = GraphBuilder::new("net", 12, [2, 4, 4]);
        let mut x = g.input();
        x = activation_node(&mut g, &layers[0], x, Some(&spec), true).unwrap();
        activation_node(&mut g, &layers[1], x, Some(&spec), true).unwrap();
        let model = g
            .finish(knapsec_core::graph::OutputKind::Segmentation)
            .unwrap()
            .0;
        assert_eq!(graph_activations(&model), layer_shapes(&layers));
        assert!(matches!(model.nodes[1].op, Op::Relu6 { .. }));
        assert_eq!(model.drelus(), 2 * 2 * 2);
        spec.layers.insert("a".into(), vec![BlockSize::RELU; 3]);
        let mut g = GraphBuilder::new("net", 12, [2, 4, 4]);
        let x = g.input();
        assert!(activation_node(&mut g, &layers[0], x, Some(&spec), false).is_err());
    }
}
