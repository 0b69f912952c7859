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

use crate::block::BlockSize;
use crate::spec::BlockSpec;

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

/// What one value costs before its payload: its node.
const NODE: usize = std::mem::size_of::<Value>();

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

/// A value on the pickle stack or in the memo, with its nesting depth (1 for a scalar) and the
/// bytes it accounts for (its node, payload and everything it holds).
#[derive(Clone, Debug)]
struct Item {
    v: Value,
    depth: usize,
    cost: usize,
}

/// Running total of the bytes charged against [`MAX_PICKLE_BYTES`].
struct Budget {
    used: usize,
}

impl Budget {
    fn charge(&mut self, bytes: usize, at: usize) -> Result<(), String> {
        match self.used.checked_add(bytes) {
            Some(used) if used <= MAX_PICKLE_BYTES => {
                self.used = used;
                Ok(())
            }
            _ => Err(format!(
                "pickle exceeds the allocation limit of {MAX_PICKLE_BYTES} bytes at byte {at} \
                 (a memo reference copies too much data)"
            )),
        }
    }

    /// A new scalar or payload value, charged as one node plus `payload` bytes.
    fn leaf(&mut self, v: Value, payload: usize, at: usize) -> Result<Item, String> {
        let cost = NODE.saturating_add(payload);
        self.charge(cost, at)?;
        Ok(Item { v, depth: 1, cost })
    }

    /// A new container over `items` (already charged), charged one node.
    fn wrap(
        &mut self,
        items: Vec<Item>,
        make: impl FnOnce(Vec<Value>) -> Value,
        at: usize,
    ) -> Result<Item, String> {
        self.charge(NODE, at)?;
        let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
        check_depth(depth, at)?;
        let cost = items.iter().fold(NODE, |acc, i| acc.saturating_add(i.cost));
        Ok(Item {
            v: make(items.into_iter().map(|i| i.v).collect()),
            depth,
            cost,
        })
    }

    /// A copy of `item` (memo `PUT` and `GET`), charged in full.
    fn copy(&mut self, item: &Item, at: usize) -> Result<Item, String> {
        self.charge(item.cost, at)?;
        Ok(item.clone())
    }
}

fn check_depth(depth: usize, at: usize) -> Result<(), String> {
    if depth > MAX_PICKLE_DEPTH {
        return Err(format!(
            "values nested deeper than {MAX_PICKLE_DEPTH} levels at byte {at}"
        ));
    }
    Ok(())
}

/// `container` (on the stack) takes `added` (already charged) as its members.
fn absorb(container: &mut Item, added: &[&Item], at: usize) -> Result<(), String> {
    for a in added {
        container.depth = container.depth.max(a.depth + 1);
        container.cost = container.cost.saturating_add(a.cost);
    }
    check_depth(container.depth, at)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        // `n` comes from the file (up to 2^64 - 1): compare against what is left, never add.
        if n > self.data.len() - self.pos {
            return Err(format!(
                "truncated pickle at byte {}: {n} bytes announced, {} left",
                self.pos,
                self.data.len() - self.pos
            ));
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
    /// A length field of `n` bytes, as `usize` (saturating: `take` refuses it anyway).
    fn len(&mut self, n: usize) -> Result<usize, String> {
        Ok(usize::try_from(self.le(n)?).unwrap_or(usize::MAX))
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

fn pop_mark(stack: &mut Vec<Item>) -> Result<Vec<Item>, String> {
    let at = stack
        .iter()
        .rposition(|i| i.v == Value::Mark)
        .ok_or("MARK expected on the pickle stack")?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items)
}

fn pop(stack: &mut Vec<Item>) -> Result<Item, String> {
    stack
        .pop()
        .ok_or_else(|| "pickle stack underflow".to_string())
}

fn run(data: &[u8]) -> Result<Value, String> {
    let mut r = Reader { data, pos: 0 };
    let mut b = Budget { used: 0 };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Item> = std::collections::HashMap::new();
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
            b'.' => return pop(&mut stack).map(|i| i.v),
            b'}' => stack.push(b.leaf(Value::Dict(vec![]), 0, at)?),
            b']' => stack.push(b.leaf(Value::List(vec![]), 0, at)?),
            b')' => stack.push(b.leaf(Value::Tuple(vec![]), 0, at)?),
            b'(' => stack.push(b.leaf(Value::Mark, 0, at)?),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(b.wrap(items, Value::Tuple, at)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(b.wrap(items, Value::Tuple, at)?);
            }
            b'J' => stack.push(b.leaf(Value::Int(r.le(4)? as u32 as i32 as i64), 0, at)?),
            b'K' => stack.push(b.leaf(Value::Int(r.le(1)? as i64), 0, at)?),
            b'M' => stack.push(b.leaf(Value::Int(r.le(2)? as i64), 0, at)?),
            0x8a => {
                let n = r.u8()? as usize;
                if n > 8 {
                    return Err(format!("integer of {n} bytes at byte {at} is too large"));
                }
                let bytes = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &x) in bytes.iter().enumerate() {
                    v |= i64::from(x) << (8 * i);
                }
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(b.leaf(Value::Int(v), 0, at)?);
            }
            b'N' => stack.push(b.leaf(Value::None, 0, at)?),
            0x88 => stack.push(b.leaf(Value::Bool(true), 0, at)?),
            0x89 => stack.push(b.leaf(Value::Bool(false), 0, at)?),
            b'G' => {
                let bits = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
                stack.push(b.leaf(Value::Float(f64::from_bits(bits)), 0, at)?);
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.len(4)?,
                    0x8c => r.len(1)?,
                    _ => r.len(8)?,
                };
                let s = r.utf8(n)?;
                stack.push(b.leaf(Value::Str(s), n, at)?);
            }
            b'C' | b'B' | 0x8e | 0x96 => {
                let n = match op {
                    b'C' => r.len(1)?,
                    b'B' => r.len(4)?,
                    _ => r.len(8)?,
                };
                let bytes = r.take(n)?.to_vec();
                stack.push(b.leaf(Value::Bytes(bytes), n, at)?);
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                let g = format!("{module}.{name}");
                let n = g.len();
                stack.push(b.leaf(Value::Global(g), n, at)?);
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module.v, name.v) {
                    (Value::Str(m), Value::Str(n)) => {
                        let g = format!("{m}.{n}");
                        let len = g.len();
                        stack.push(b.leaf(Value::Global(g), len, at)?);
                    }
                    _ => return Err(format!("STACK_GLOBAL at byte {at} without two strings")),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                let cost = NODE.saturating_add(func.cost).saturating_add(args.cost);
                let (Value::Global(func), Value::Tuple(args_v)) = (func.v, args.v) else {
                    return Err(format!(
                        "REDUCE at byte {at} on something other than a global and a tuple"
                    ));
                };
                let depth = args.depth + 1;
                check_depth(depth, at)?;
                b.charge(NODE, at)?;
                stack.push(Item {
                    v: Value::Call {
                        func,
                        args: args_v,
                        state: None,
                    },
                    depth,
                    cost,
                });
            }
            b'b' => {
                let st = pop(&mut stack)?;
                let Some(top) = stack.last_mut() else {
                    return Err(format!("BUILD at byte {at} on an empty stack"));
                };
                absorb(top, &[&st], at)?;
                match &mut top.v {
                    Value::Call { state, .. } => *state = Some(Box::new(st.v)),
                    _ => {
                        return Err(format!(
                            "BUILD at byte {at} on something other than an object"
                        ));
                    }
                }
            }
            0x94 => {
                let top = stack.last().ok_or("MEMOIZE on an empty stack")?;
                let v = b.copy(top, at)?;
                memo.insert(memo.len() as u64, v);
            }
            b'q' | b'r' => {
                let key = if op == b'q' { r.le(1)? } else { r.le(4)? };
                let top = stack.last().ok_or("PUT on an empty stack")?;
                let v = b.copy(top, at)?;
                memo.insert(key, v);
            }
            b'h' | b'j' => {
                let key = if op == b'h' { r.le(1)? } else { r.le(4)? };
                let item = memo
                    .get(&key)
                    .ok_or_else(|| format!("GET of unknown memo {key} at byte {at}"))?;
                let v = b.copy(item, at)?;
                stack.push(v);
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                let Some(top) = stack.last_mut() else {
                    return Err(format!("SETITEM at byte {at} outside a dict"));
                };
                absorb(top, &[&k, &v], at)?;
                match &mut top.v {
                    Value::Dict(d) => d.push((k.v, v.v)),
                    _ => return Err(format!("SETITEM at byte {at} outside a dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let Some(top) = stack.last_mut() else {
                    return Err(format!("SETITEMS at byte {at} outside a dict"));
                };
                absorb(top, &items.iter().collect::<Vec<_>>(), at)?;
                let Value::Dict(d) = &mut top.v else {
                    return Err(format!("SETITEMS at byte {at} outside a dict"));
                };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k.v, v.v));
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                let Some(top) = stack.last_mut() else {
                    return Err(format!("APPEND at byte {at} outside a list"));
                };
                absorb(top, &[&v], at)?;
                match &mut top.v {
                    Value::List(l) => l.push(v.v),
                    _ => return Err(format!("APPEND at byte {at} outside a list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                let Some(top) = stack.last_mut() else {
                    return Err(format!("APPENDS at byte {at} outside a list"));
                };
                absorb(top, &items.iter().collect::<Vec<_>>(), at)?;
                match &mut top.v {
                    Value::List(l) => l.extend(items.into_iter().map(|i| i.v)),
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

    /// A pickle whose only content is one opcode with an 8-byte length that runs past the end
    /// of the data; `pos + n` must not overflow.
    #[test]
    fn huge_lengths_are_refused_not_overflowed() {
        for op in [0x8d_u8, 0x8e, 0x96] {
            for n in [u64::MAX, u64::MAX - 3, 1 << 63] {
                let mut p = vec![0x80, 4, op];
                p.extend(n.to_le_bytes());
                p.extend(b"abc.");
                let e = from_reference_pickle(&p, "x").unwrap_err();
                assert!(
                    e.contains("truncated"),
                    "opcode 0x{op:02x}, length {n}: {e}"
                );
            }
        }
    }

    /// One dict entry `"l": numpy array` with the given shape, dtype and raw data.
    fn array_pickle(shape: &[i64], dtype: &str, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, 3, b'}', b'(', 0x8c, 1, b'l'];
        out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n");
        out.extend([
            b'K', 0, 0x85, b'C', 1, b'b', 0x87, b'R', b'(', b'K', 1, b'(',
        ]);
        for &d in shape {
            out.extend([0x8a, 8]);
            out.extend(d.to_le_bytes());
        }
        out.push(b't');
        out.extend(b"cnumpy\ndtype\n");
        out.extend([0x8c, dtype.len() as u8]);
        out.extend(dtype.as_bytes());
        out.extend([0x89, 0x88, 0x87, b'R', b'(', b'K', 3, 0x8c, 1, b'<']);
        out.extend([b'N', b'N', b'N', b'J']);
        out.extend((-1i32).to_le_bytes());
        out.push(b'J');
        out.extend((-1i32).to_le_bytes());
        out.extend([b'K', 0, b't', b'b', 0x89, b'B']);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        out.extend([b't', b'b', b'u', b'.']);
        out
    }

    #[test]
    fn array_sizes_are_checked_arithmetic() {
        // The helper itself builds a valid array.
        let ok = array_pickle(&[1, 2], "i4", &[2, 0, 0, 0, 3, 0, 0, 0]);
        let spec = from_reference_pickle(&ok, "x").unwrap();
        assert_eq!(spec.layers["l"], vec![BlockSize::Patch { h: 2, w: 3 }]);
        // The element count overflows usize.
        let e = from_reference_pickle(&array_pickle(&[1 << 32, 1 << 32, 2], "i4", &[]), "x")
            .unwrap_err();
        assert!(e.contains("too large"), "{e}");
        // The element count fits, count · width does not.
        let e = from_reference_pickle(&array_pickle(&[1 << 61, 2], "i8", &[]), "x").unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    /// Lists that hold their predecessor twice, through the memo: a few hundred bytes that
    /// unpickle to 2^levels copies of a 1 KiB string.
    fn memo_bomb(levels: usize) -> Vec<u8> {
        let mut out = vec![0x80, 3, b'B'];
        out.extend(1024u32.to_le_bytes());
        out.extend([b'x'; 1024]);
        out.extend([b'q', 0]);
        for i in 0..levels {
            out.extend([
                b']',
                b'(',
                b'h',
                i as u8,
                b'h',
                i as u8,
                b'e',
                b'q',
                i as u8 + 1,
            ]);
        }
        out.push(b'.');
        out
    }

    #[test]
    fn memo_bombs_hit_the_allocation_limit() {
        // 2^17 copies of 1 KiB: twice the limit.
        const { assert!(MAX_PICKLE_BYTES <= 64 << 20) };
        let e = from_reference_pickle(&memo_bomb(17), "x").unwrap_err();
        assert!(e.contains("allocation limit"), "{e}");
        // A small one is fine (and then refused for not being a dict).
        let e = from_reference_pickle(&memo_bomb(3), "x").unwrap_err();
        assert!(e.contains("dict"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        // `()` wrapped in a one-tuple 200 000 times: dropping it recursively would overflow
        // the stack.
        let mut p = vec![0x80, 4, b')'];
        p.extend(std::iter::repeat_n(0x85, 200_000));
        p.push(b'.');
        let e = from_reference_pickle(&p, "x").unwrap_err();
        assert!(e.contains("nested"), "{e}");
    }
}
