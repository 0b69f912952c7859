//! Weight files: safetensors with PyTorch `state_dict` key names (DESIGN §3 "weights").
//!
//! [`save`] writes every variable of a `VarStore` under its `state_dict` name (tch joins path
//! components with `.`, as PyTorch does), plus a `num_batches_tracked` (I64 scalar) for every
//! BatchNorm so that PyTorch's `load_state_dict(strict=True)` accepts the file. The metadata
//! carries the architecture name (`arch`) and the format (`knapsec-weights/1`).
//!
//! [`load`] accepts F32, F64, F16, BF16 and I64 tensors, maps each key through the network's
//! `import_key` (e.g. torchvision → OpenMMLab names), ignores `num_batches_tracked`, and
//! refuses a file with missing, unexpected or wrongly-shaped keys with one error listing all
//! of them. Nothing is modified unless the whole file matches.

use crate::error::{NnError, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor, nn};

/// Value of the `format` metadata entry.
pub const WEIGHTS_FORMAT: &str = "knapsec-weights/1";
const NUM_BATCHES: &str = ".num_batches_tracked";

fn element_bytes(t: &Tensor) -> (safetensors::Dtype, Vec<u8>) {
    let t = t
        .detach()
        .to_device(tch::Device::Cpu)
        .contiguous()
        .flatten(0, -1);
    match t.kind() {
        Kind::Double => {
            let v: Vec<f64> = Vec::try_from(&t).expect("f64 tensor");
            (
                safetensors::Dtype::F64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
        Kind::Int64 => {
            let v: Vec<i64> = Vec::try_from(&t).expect("i64 tensor");
            (
                safetensors::Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
        _ => {
            let v: Vec<f32> = Vec::try_from(&t.to_kind(Kind::Float)).expect("f32 tensor");
            (
                safetensors::Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
    }
}

/// Writes every variable of `vs` to `path` (atomically) with `state_dict` names.
pub fn save(vs: &nn::VarStore, path: &Path, arch: &str) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in &vars {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let (dtype, bytes) = element_bytes(t);
        entries.push((name.clone(), dtype, shape, bytes));
        if let Some(prefix) = name.strip_suffix(".running_mean") {
            let key = format!("{prefix}{NUM_BATCHES}");
            if !vars.contains_key(&key) {
                entries.push((
                    key,
                    safetensors::Dtype::I64,
                    vec![],
                    0i64.to_le_bytes().to_vec(),
                ));
            }
        }
    }
    let views = entries
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| NnError::WeightFile {
                    path: path.into(),
                    message: format!("tensor {n:?}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = [
        ("arch".to_string(), arch.to_string()),
        ("format".to_string(), WEIGHTS_FORMAT.to_string()),
    ]
    .into();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| NnError::WeightFile {
        path: path.into(),
        message: e.to_string(),
    })?;
    knapsec_core::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

fn to_tensor(path: &Path, key: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
    use safetensors::Dtype;
    let data = view.data();
    let t = match view.dtype() {
        Dtype::F32 => Tensor::from_slice(
            &data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>(),
        ),
        Dtype::F64 => Tensor::from_slice(
            &data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>(),
        ),
        Dtype::I64 => Tensor::from_slice(
            &data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>(),
        ),
        Dtype::F16 => Tensor::from_slice(
            &data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect::<Vec<_>>(),
        ),
        Dtype::BF16 => Tensor::from_slice(
            &data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect::<Vec<_>>(),
        ),
        other => {
            return Err(NnError::UnsupportedDtype {
                path: path.into(),
                key: key.into(),
                dtype: format!("{other:?}"),
            });
        }
    };
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(t.reshape(shape))
}

fn list(title: &str, items: &[String], out: &mut String) {
    if items.is_empty() {
        return;
    }
    const SHOWN: usize = 20;
    out.push_str(&format!(
        "\n  {title} ({}): {}",
        items.len(),
        items[..items.len().min(SHOWN)].join(", ")
    ));
    if items.len() > SHOWN {
        out.push_str(&format!(", … and {} more", items.len() - SHOWN));
    }
}

/// Loads `path` into `vs`. `import_key` maps each file key to this network's key. The file's
/// `arch` metadata, when present, must equal `arch`.
pub fn load(
    vs: &mut nn::VarStore,
    path: &Path,
    arch: &str,
    import_key: &dyn Fn(&str) -> String,
) -> Result<()> {
    let bytes = knapsec_core::fsutil::read(path)?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| NnError::WeightFile {
            path: path.into(),
            message: format!("not a safetensors file: {e}"),
        })?;
    if let Some(found) = meta.metadata().as_ref().and_then(|m| m.get("arch"))
        && found != arch
    {
        return Err(NnError::WeightFile {
            path: path.into(),
            message: format!("weights are for architecture {found:?}, not {arch:?}"),
        });
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| NnError::WeightFile {
        path: path.into(),
        message: e.to_string(),
    })?;
    let vars = vs.variables();
    let mut missing: Vec<String> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    let mut found: HashMap<String, String> = HashMap::new(); // our key -> file key
    for file_key in st.names() {
        let key = import_key(file_key);
        if key.ends_with(NUM_BATCHES) {
            continue;
        }
        match vars.get(&key) {
            None => unexpected.push(if key == file_key {
                key
            } else {
                format!("{file_key} (as {key})")
            }),
            Some(var) => {
                let view = st.tensor(file_key).map_err(|e| NnError::WeightFile {
                    path: path.into(),
                    message: e.to_string(),
                })?;
                use safetensors::Dtype;
                if !matches!(
                    view.dtype(),
                    Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 | Dtype::I64
                ) {
                    return Err(NnError::UnsupportedDtype {
                        path: path.into(),
                        key: file_key.to_string(),
                        dtype: format!("{:?}", view.dtype()),
                    });
                }
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if shape != var.size() {
                    wrong.push(format!("{key} (file {shape:?}, network {:?})", var.size()));
                }
                found.insert(key, file_key.to_string());
            }
        }
    }
    missing.extend(vars.keys().filter(|k| !found.contains_key(*k)).cloned());
    missing.sort();
    unexpected.sort();
    wrong.sort();
    if !(missing.is_empty() && unexpected.is_empty() && wrong.is_empty()) {
        let mut details = String::new();
        list("missing keys", &missing, &mut details);
        list("unexpected keys", &unexpected, &mut details);
        list("wrongly shaped keys", &wrong, &mut details);
        return Err(NnError::WeightMismatch {
            path: path.into(),
            arch: arch.into(),
            details,
        });
    }
    let _guard = tch::no_grad_guard();
    for (key, var) in vars {
        let file_key = &found[&key];
        let view = st.tensor(file_key).map_err(|e| NnError::WeightFile {
            path: path.into(),
            message: e.to_string(),
        })?;
        let t = to_tensor(path, file_key, &view)?;
        let mut var = var;
        var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
    }
    Ok(())
}

/// Re-initialises every variable of `vs` from a generator seeded with `seed` and the
/// variable's name, independently of tch's global generator (which parallel tests share, so
/// `tch::manual_seed` then `build` is not reproducible there). Matrices and kernels get
/// PyTorch's default `U(±1/√fan_in)`; one-dimensional `weight`s and `running_var`s
/// `U(0.5, 1.5)`; biases and `running_mean`s `U(±0.1)`. Meant for tests and benchmarks.
pub fn reinit_seeded(vs: &nn::VarStore, seed: u64) {
    use rand::{Rng, SeedableRng};
    let _guard = tch::no_grad_guard();
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    for (name, mut t) in variables {
        let size = t.size();
        let numel: i64 = size.iter().product();
        let name_hash = blake3::hash(name.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(name_hash.as_bytes());
        for (k, s) in key.iter_mut().zip(seed.to_le_bytes()) {
            *k ^= s;
        }
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
        let (low, high) = if size.len() >= 2 {
            let bound = 1.0 / ((numel / size[0].max(1)).max(1) as f64).sqrt();
            (-bound, bound)
        } else if name.ends_with("running_var") || name.ends_with("weight") {
            (0.5, 1.5)
        } else {
            (-0.1, 0.1)
        };
        let values: Vec<f64> = (0..numel).map(|_| rng.random_range(low..high)).collect();
        let fresh = Tensor::from_slice(&values)
            .view(size.as_slice())
            .to_kind(t.kind())
            .to_device(t.device());
        t.copy_(&fresh);
    }
}
