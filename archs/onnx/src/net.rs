//! The tch side of ONNX import (cargo feature `torch`): `onnx:PATH` networks are the
//! `knapsec-nn` interpreter ([`knapsec_nn::DescNet`]) running the imported description, with
//! the ONNX initializers as weights (a `--weights` file, keyed by initializer names or by the
//! description's names, replaces them afterwards; a graph-only file's external initializers
//! keep the interpreter's initialisation until it does).

use crate::{PREFIX, check_options, load};
use knapsec_core::ArchOptions;
use knapsec_nn::net::{BlockNet, NetSourceRegistration};
use knapsec_nn::tch::{Tensor, nn};
use knapsec_nn::{DescNet, NnError};
use std::collections::HashMap;
use std::path::Path;

/// Builds the interpreter network of the ONNX file at `path` under `root`, weights loaded.
pub fn build(path: &str, options: &ArchOptions, root: &nn::Path) -> knapsec_nn::Result<DescNet> {
    let imported = load(Path::new(path))
        .map_err(|e| NnError::Core(knapsec_core::CoreError::Invalid(e.to_string())))?;
    check_options(&imported.desc.arch, options)?;
    let import: HashMap<String, String> = imported.keys.clone().into_iter().collect();
    let mut net = DescNet::new(imported.desc, options, root, import)?;
    for (key, w) in &imported.weights {
        if imported.missing.contains(key) {
            // A graph-only file: the interpreter's initialisation stands until `--weights`.
            continue;
        }
        let shape: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
        net.set_param(key, &Tensor::from_slice(&w.data).reshape(shape.as_slice()))?;
    }
    Ok(net)
}

fn build_boxed(
    path: &str,
    options: &ArchOptions,
    root: &nn::Path,
) -> knapsec_nn::Result<Box<dyn BlockNet>> {
    Ok(Box::new(build(path, options, root)?))
}

knapsec_nn::inventory::submit! {
    NetSourceRegistration { prefix: PREFIX, provider: "knapsec-arch-onnx", build: build_boxed }
}
