//! Import (and export, for round trips) of the reference's block-spec files (digest §3.4): a
//! Python pickle of `dict[str, numpy.ndarray int32 [C, 2]]`.
//!
//! This is a small, safe pickle reader: it understands the opcodes that `pickle.dump` emits
//! for such a dictionary (protocols 2 to 5) and builds values without importing or calling
//! anything; the only "calls" it interprets are numpy's `_reconstruct` / `dtype` and
//! `_codecs.encode` (protocol 2 bytes). Anything else is refused with the opcode and offset.

use crate::block::BlockSize;
use crate::spec::BlockSpec;

#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    /// `callable(*args)` with an optional `__setstate__` state.
    Call {
        func: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    Mark,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.pos + n > self.data.len() {
            return Err(format!("truncated pickle at byte {}", self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }
    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        let end = self.data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated line in pickle")?;
        self.pos = start + end + 1;
        Ok(String::from_utf8_lossy(&self.data[start..start + end]).into_owned())
    }
    fn utf8(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| format!("invalid UTF-8 near byte {}", self.pos))
    }
}

fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, String> {
    let at = stack
        .iter()
        .rposition(|v| *v == Value::Mark)
        .ok_or("MARK expected on the pickle stack")?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items)
}

fn pop(stack: &mut Vec<Value>) -> Result<Value, String> {
    stack
        .pop()
        .ok_or_else(|| "pickle stack underflow".to_string())
}

fn run(data: &[u8]) -> Result<Value, String> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Value> = std::collections::HashMap::new();
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?;
            } // PROTO
            0x95 => {
                r.take(8)?;
            } // FRAME
            b'.' => return pop(&mut stack),
            b'}' => stack.push(Value::Dict(vec![])),
            b']' => stack.push(Value::List(vec![])),
            b')' => stack.push(Value::Tuple(vec![])),
            b'(' => stack.push(Value::Mark),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'J' => stack.push(Value::Int(r.le(4)? as u32 as i32 as i64)),
            b'K' => stack.push(Value::Int(r.le(1)? as i64)),
            b'M' => stack.push(Value::Int(r.le(2)? as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                if n > 8 {
                    return Err(format!("integer of {n} bytes at byte {at} is too large"));
                }
                let b = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= i64::from(x) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'G' => stack.push(Value::Float(f64::from_bits(u64::from_be_bytes(
                r.take(8)?.try_into().unwrap(),
            )))),
            b'X' => {
                let n = r.le(4)? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            0x8d => {
                let n = r.le(8)? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'B' => {
                let n = r.le(4)? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x8e | 0x96 => {
                let n = r.le(8)? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => return Err(format!("STACK_GLOBAL at byte {at} without two strings")),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                let (Value::Global(func), Value::Tuple(args)) = (func, args) else {
                    return Err(format!(
                        "REDUCE at byte {at} on something other than a global and a tuple"
                    ));
                };
                stack.push(Value::Call {
                    func,
                    args,
                    state: None,
                });
            }
            b'b' => {
                let st = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Call { state, .. }) => *state = Some(Box::new(st)),
                    _ => {
                        return Err(format!(
                            "BUILD at byte {at} on something other than an object"
                        ));
                    }
                }
            }
            0x94 => {
                let v = stack.last().ok_or("MEMOIZE on an empty stack")?.clone();
                memo.insert(memo.len() as u64, v);
            }
            b'q' | b'r' => {
                let key = if op == b'q' { r.le(1)? } else { r.le(4)? };
                let v = stack.last().ok_or("PUT on an empty stack")?.clone();
                memo.insert(key, v);
            }
            b'h' | b'j' => {
                let key = if op == b'h' { r.le(1)? } else { r.le(4)? };
                stack.push(
                    memo.get(&key)
                        .cloned()
                        .ok_or_else(|| format!("GET of unknown memo {key} at byte {at}"))?,
                );
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(format!("SETITEM at byte {at} outside a dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let Some(Value::Dict(d)) = stack.last_mut() else {
                    return Err(format!("SETITEMS at byte {at} outside a dict"));
                };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(format!("APPEND at byte {at} outside a list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(format!("APPENDS at byte {at} outside a list")),
                }
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {at}"
                ));
            }
        }
    }
}

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
    let count: usize = shape.iter().product();
    if bytes.len() != count * width {
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
mod tests {
    use super::*;

    #[test]
    fn own_pickle_round_trips() {
        let mut s = BlockSpec::new("toy");
        s.layers.insert(
            "stem".into(),
            vec![
                BlockSize::Patch { h: 2, w: 3 },
                BlockSize::Identity,
                BlockSize::Zero,
            ],
        );
        s.layers.insert("layer1_0_1".into(), vec![BlockSize::RELU]);
        let bytes = to_reference_pickle(&s);
        assert_eq!(from_reference_pickle(&bytes, "toy").unwrap(), s);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(
            from_reference_pickle(b"\x80\x03}q\x00(", "x")
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            from_reference_pickle(b"\x80\x03K\x05.", "x")
                .unwrap_err()
                .contains("dict")
        );
        assert!(
            from_reference_pickle(b"\xff", "x")
                .unwrap_err()
                .contains("opcode")
        );
    }
}
