//! Import (and export, for round trips) of the reference's block-spec files (digest §3.4): a
//! Python pickle of `dict[str, numpy.ndarray int32 [C, 2]]`.
//!
//! This is a small, safe pickle reader: it understands the opcodes that `pickle.dump` emits
//! for such a dictionary (protocols 2 to 5) and builds values without importing or calling
//! anything; the only "calls" it interprets are numpy's `_reconstruct` / `dtype` and
//! `_codecs.encode` (protocol 2 bytes). Anything else is refused with the opcode and offset.
//!
//! The reader never panics and its memory is bounded whatever the bytes: lengths are compared
//! with what is left of the input (never added to a position), array sizes use checked
//! arithmetic, containers nest at most [`MAX_PICKLE_DEPTH`] deep, and the values it builds,
//! memo copies included, stay within [`MAX_PICKLE_BYTES`].
//!
//! Parts: this module turns pickled arrays into a [`BlockSpec`] and back; `reader` is the
//! pickle machine.

use crate::block::BlockSize;
use crate::spec::BlockSpec;
use reader::{Value, run};

mod reader;

/// Most bytes the reader allocates for the values of one pickle: strings and byte strings,
/// one node per value (stack entries, list, tuple and dict items), and every copy that a memo
/// `PUT` or `GET` makes. A copy is charged in full, so a "pickle bomb" (a few bytes whose memo
/// references unpickle to gigabytes) stops here with an error. The arrays decoded afterwards
/// come from data already charged, so the whole import stays within a small multiple of this.
/// A reference spec of every ResNet-50 layer needs well under 1 MiB.
pub const MAX_PICKLE_BYTES: usize = 64 << 20;
/// Deepest nesting of containers accepted (a spec pickle nests about 5 deep); deeper values
/// would make dropping or comparing them recurse without bound.
pub const MAX_PICKLE_DEPTH: usize = 64;

/// Bytes of a numpy array's raw data: protocol ≥ 3 stores them directly, protocol 2 as a
/// latin-1 string passed to `_codecs.encode`.
fn raw_bytes(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::Bytes(b) => Ok(b.clone()),
        Value::Call { func, args, .. } if func == "_codecs.encode" => match args.first() {
            Some(Value::Str(s)) => Ok(s.chars().map(|c| c as u32 as u8).collect()),
            _ => Err("_codecs.encode without a string".into()),
        },
        _ => Err("array data is not a byte string".into()),
    }
}

/// Decodes a pickled numpy array of integers into `(shape, values)`.
fn decode_array(key: &str, v: &Value) -> Result<(Vec<usize>, Vec<i64>), String> {
    let bad = |why: &str| format!("layer {key:?}: {why}");
    let Value::Call {
        func,
        state: Some(state),
        ..
    } = v
    else {
        return Err(bad("value is not a numpy array"));
    };
    if !func.ends_with("multiarray._reconstruct") {
        return Err(bad(&format!("value is a {func}, not a numpy array")));
    }
    let Value::Tuple(st) = state.as_ref() else {
        return Err(bad("array state is not a tuple"));
    };
    let [_, Value::Tuple(shape), dtype, Value::Bool(fortran), data] = st.as_slice() else {
        return Err(bad("unexpected array state layout"));
    };
    let shape: Vec<usize> = shape
        .iter()
        .map(|d| match d {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => Err(bad("bad shape")),
        })
        .collect::<Result<_, _>>()?;
    let Value::Call { func, args, state } = dtype else {
        return Err(bad("array dtype missing"));
    };
    if !func.ends_with("dtype") {
        return Err(bad("array dtype missing"));
    }
    let Some(Value::Str(code)) = args.first() else {
        return Err(bad("dtype without a type code"));
    };
    let big_endian = matches!(state.as_deref(), Some(Value::Tuple(s)) if s.get(1) == Some(&Value::Str(">".into())));
    let width = match code.as_str() {
        "i1" | "u1" => 1,
        "i2" | "u2" => 2,
        "i4" | "u4" => 4,
        "i8" | "u8" => 8,
        other => return Err(bad(&format!("dtype {other} is not an integer type"))),
    };
    let signed = code.starts_with('i');
    let bytes = raw_bytes(data).map_err(|e| bad(&e))?;
    let too_large = || bad(&format!("array shape {shape:?} is too large"));
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(too_large)?;
    let expected = count.checked_mul(width).ok_or_else(too_large)?;
    if bytes.len() != expected {
        return Err(bad(&format!(
            "{} data bytes for {count} elements of {width} bytes",
            bytes.len()
        )));
    }
    let mut values: Vec<i64> = bytes
        .chunks_exact(width)
        .map(|c| {
            let mut buf = [0u8; 8];
            if big_endian {
                for (i, &b) in c.iter().rev().enumerate() {
                    buf[i] = b;
                }
            } else {
                buf[..width].copy_from_slice(c);
            }
            let raw = u64::from_le_bytes(buf);
            if signed && width < 8 && raw & (1 << (8 * width - 1)) != 0 {
                (raw | (!0u64 << (8 * width))) as i64
            } else {
                raw as i64
            }
        })
        .collect();
    if *fortran && shape.len() == 2 {
        let (rows, cols) = (shape[0], shape[1]);
        let col_major = values.clone();
        for i in 0..rows {
            for j in 0..cols {
                values[i * cols + j] = col_major[j * rows + i];
            }
        }
    }
    Ok((shape, values))
}

/// Reads a reference block-spec pickle. The file carries no architecture name; `arch` is
/// recorded in the returned spec. Layer order is the file's.
pub fn from_reference_pickle(bytes: &[u8], arch: &str) -> Result<BlockSpec, String> {
    let Value::Dict(items) = run(bytes)? else {
        return Err("the pickle does not hold a dict of layer name to array".into());
    };
    let mut spec = BlockSpec::new(arch);
    for (k, v) in &items {
        let Value::Str(key) = k else {
            return Err("a dict key is not a string".into());
        };
        let (shape, values) = decode_array(key, v)?;
        if shape.len() != 2 || shape[1] != 2 {
            return Err(format!(
                "layer {key:?}: array shape {shape:?}, expected [C, 2]"
            ));
        }
        let blocks = values
            .chunks_exact(2)
            .enumerate()
            .map(|(c, row)| {
                BlockSize::from_reference([row[0], row[1]])
                    .map_err(|e| format!("layer {key:?}, channel {c}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        spec.layers.insert(key.clone(), blocks);
    }
    Ok(spec)
}

/// Writes a spec in the reference's format (pickle protocol 3, int32 `[C, 2]` arrays) that
/// Python's `pickle.load` reads back with numpy installed.
pub fn to_reference_pickle(spec: &BlockSpec) -> Vec<u8> {
    fn unicode(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn int(out: &mut Vec<u8>, v: i32) {
        out.push(b'J');
        out.extend(v.to_le_bytes());
    }
    let mut out = vec![0x80, 3, b'}', b'('];
    for (name, blocks) in &spec.layers {
        unicode(&mut out, name);
        out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n");
        int(&mut out, 0);
        out.push(0x85);
        out.extend([b'C', 1, b'b']);
        out.extend([0x87, b'R', b'(']);
        int(&mut out, 1);
        int(&mut out, blocks.len() as i32);
        int(&mut out, 2);
        out.push(0x86);
        out.extend(b"cnumpy\ndtype\n");
        unicode(&mut out, "i4");
        out.extend([0x89, 0x88, 0x87, b'R', b'(']);
        int(&mut out, 3);
        unicode(&mut out, "<");
        out.extend([b'N', b'N', b'N']);
        int(&mut out, -1);
        int(&mut out, -1);
        int(&mut out, 0);
        out.extend([b't', b'b', 0x89]);
        let data: Vec<u8> = blocks
            .iter()
            .flat_map(|b| b.to_reference())
            .flat_map(i32::to_le_bytes)
            .collect();
        out.push(b'B');
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        out.extend([b't', b'b']);
    }
    out.extend([b'u', b'.']);
    out
}

#[cfg(test)]
mod tests;
