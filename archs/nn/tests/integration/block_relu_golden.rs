//! BlockRelu against PyTorch: fixtures made by `fixtures/make_block_relu_golden.py` with the
//! reference's plaintext module (digest §1.1). Forward outputs and gradients must match exactly
//! (the same float operations decide every sign).

use knapsec_core::BlockSize;
use knapsec_nn::BlockRelu;
use std::path::Path;
use tch::{Kind, Tensor};

fn fixture() -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/block_relu_golden.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensor(st: &safetensors::SafeTensors<'_>, name: &str) -> Tensor {
    let v = st.tensor(name).unwrap();
    let data: Vec<f32> = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&data).reshape(shape)
}

#[test]
fn forward_and_gradient_match_pytorch() {
    let bytes = fixture();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<String> = serde_json_lite(&meta["cases"]);
    assert_eq!(cases.len(), 8);
    for case in cases {
        let rows = parse_rows(&meta[&format!("{case}.blocks")]);
        let blocks: Vec<BlockSize> = rows
            .iter()
            .map(|&r| BlockSize::from_reference(r).unwrap())
            .collect();
        let x = tensor(&st, &format!("{case}.x")).set_requires_grad(true);
        let g = tensor(&st, &format!("{case}.g"));
        let br = BlockRelu::new(blocks).unwrap();
        let y = br.forward(&x).unwrap();
        let want_y = tensor(&st, &format!("{case}.y"));
        assert_eq!(
            f64::try_from((&y - &want_y).abs().max()).unwrap(),
            0.0,
            "{case}: forward"
        );
        (&y * &g).sum(Kind::Float).backward();
        let want_grad = tensor(&st, &format!("{case}.grad"));
        assert_eq!(
            f64::try_from((x.grad() - want_grad).abs().max()).unwrap(),
            0.0,
            "{case}: gradient"
        );
    }
}

/// `["a", "b"]` → names (the fixture's case list; avoids a JSON dependency).
fn serde_json_lite(text: &str) -> Vec<String> {
    text.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `[[2, 2], [0, 1]]` → rows.
fn parse_rows(text: &str) -> Vec<[i64; 2]> {
    let nums: Vec<i64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len() % 2, 0);
    nums.chunks(2).map(|c| [c[0], c[1]]).collect()
}
