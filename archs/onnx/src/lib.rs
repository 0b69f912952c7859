//! knapsec-arch-onnx: ONNX import (DESIGN §2, §4). A `.onnx` file exported from PyTorch (or
//! anything else that writes standard ONNX, opsets 11–21) becomes a
//! [`knapsec_core::netdesc::NetDesc`]; wherever an architecture name is accepted,
//! `onnx:PATH` names the network in that file.
//!
//! * [`import`]: the importer ([`import::import`], the supported operators, naming).
//! * [`proto`]: the `onnx.proto` messages it decodes, with `prost`.
//! * [`OnnxArch`]: the architecture adapter of an imported network, registered as the source
//!   of `onnx:` names (`knapsec_core::registry::ArchSourceRegistration`).
//! * With the cargo feature `torch`, `net` registers the tch side: the `knapsec-nn`
//!   interpreter runs the description, with the ONNX initializers as its weights.

pub mod error;
pub mod import;
#[cfg(feature = "torch")]
pub mod net;
pub mod proto;

pub use error::{OnnxError, Result};
pub use import::{Imported, Weight, import};

use knapsec_core::registry::ArchSourceRegistration;
use knapsec_core::{ArchAdapter, ArchOptions, CoreError, LayerTable};
use std::path::Path;
use std::sync::Arc;

/// Architecture-name prefix of ONNX files: `onnx:PATH`.
pub const PREFIX: &str = "onnx";

/// Largest ONNX file read (bytes); larger files are refused before reading.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Reads and imports the ONNX file at `path`; the description is named `onnx:PATH`.
pub fn load(path: &Path) -> Result<Imported> {
    let io = |source| OnnxError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(OnnxError::Graph(format!(
            "{} is {len} bytes, more than the {MAX_FILE_BYTES} read",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    import(&bytes, &format!("{PREFIX}:{}", path.display()))
}

/// The architecture adapter of an imported ONNX network: its layer table at the file's input
/// size. Options are refused (the file fixes input size, classes and width).
#[derive(Debug)]
pub struct OnnxArch {
    name: String,
    imported: Imported,
}

impl OnnxArch {
    /// Imports `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let imported = load(path)?;
        Ok(OnnxArch {
            name: imported.desc.arch.clone(),
            imported,
        })
    }

    /// The imported network.
    pub fn imported(&self) -> &Imported {
        &self.imported
    }
}

/// Refuses options for an ONNX network, which its file fixes.
pub fn check_options(name: &str, options: &ArchOptions) -> std::result::Result<(), CoreError> {
    if *options != ArchOptions::default() {
        return Err(CoreError::Invalid(format!(
            "architecture {name:?}: the ONNX file fixes the input size, classes and width; \
             architecture options are not accepted"
        )));
    }
    Ok(())
}

impl ArchAdapter for OnnxArch {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        "network imported from an ONNX file"
    }

    fn layer_table(&self, options: &ArchOptions) -> knapsec_core::Result<LayerTable> {
        check_options(&self.name, options)?;
        self.imported.desc.layer_table()
    }

    fn network_summary(&self) -> Option<String> {
        Some(self.imported.desc.summary())
    }

    /// True unless the file is graph-only (initializers with external data).
    fn own_weights(&self) -> bool {
        self.imported.missing.is_empty()
    }

    /// The description's secure graph ([`knapsec_core::netdesc::NetDesc::secure_graph`]):
    /// BatchNorm folded into its convolution; a node without a secure form (asymmetric
    /// padding, ceil-mode pooling that changes the size, a resize of a map larger than 1×1)
    /// is refused naming the node.
    fn secure_graph(
        &self,
        options: &ArchOptions,
        spec: Option<&knapsec_core::BlockSpec>,
        frac_bits: u32,
    ) -> knapsec_core::Result<Option<knapsec_core::graph::SecureModel>> {
        check_options(&self.name, options)?;
        let (model, _) = self.imported.desc.secure_graph(spec, frac_bits)?;
        Ok(Some(model))
    }
}

fn load_source(rest: &str) -> knapsec_core::Result<Arc<dyn ArchAdapter>> {
    OnnxArch::load(Path::new(rest))
        .map(|a| Arc::new(a) as Arc<dyn ArchAdapter>)
        .map_err(|e| CoreError::Invalid(e.to_string()))
}

knapsec_core::inventory::submit! {
    ArchSourceRegistration { prefix: PREFIX, provider: "knapsec-arch-onnx", load: load_source }
}
