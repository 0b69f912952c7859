//! The pickle virtual machine of the spec import (digest §3.4): the opcodes `pickle.dump`
//! emits for a dictionary of numpy arrays (protocols 2 to 5), run without importing or
//! calling anything, under the depth and byte budget of [`MAX_PICKLE_DEPTH`] and
//! [`MAX_PICKLE_BYTES`].

use super::{MAX_PICKLE_BYTES, MAX_PICKLE_DEPTH};

/// What one value costs before its payload: its node.
const NODE: usize = std::mem::size_of::<Value>();

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value {
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

/// The container on top of `stack` that `op` adds `added` to, after counting them against the
/// budget ([`absorb`]); an error if the stack is empty.
fn add_to_top<'s>(
    stack: &'s mut [Item],
    op: &str,
    added: &[&Item],
    at: usize,
) -> Result<&'s mut Value, String> {
    let kind = if op.starts_with("SET") {
        "dict"
    } else {
        "list"
    };
    let top = stack.last_mut().ok_or_else(|| outside(op, kind, at))?;
    absorb(top, added, at)?;
    Ok(&mut top.v)
}

/// The error of `op` (at byte `at`) without a `kind` (dict or list) to add to.
fn outside(op: &str, kind: &str, at: usize) -> String {
    format!("{op} at byte {at} outside a {kind}")
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

pub(super) fn run(data: &[u8]) -> Result<Value, String> {
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
                match add_to_top(&mut stack, "SETITEM", &[&k, &v], at)? {
                    Value::Dict(d) => d.push((k.v, v.v)),
                    _ => return Err(outside("SETITEM", "dict", at)),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let Value::Dict(d) = add_to_top(
                    &mut stack,
                    "SETITEMS",
                    &items.iter().collect::<Vec<_>>(),
                    at,
                )?
                else {
                    return Err(outside("SETITEMS", "dict", at));
                };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k.v, v.v));
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match add_to_top(&mut stack, "APPEND", &[&v], at)? {
                    Value::List(l) => l.push(v.v),
                    _ => return Err(outside("APPEND", "list", at)),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match add_to_top(&mut stack, "APPENDS", &items.iter().collect::<Vec<_>>(), at)? {
                    Value::List(l) => l.extend(items.into_iter().map(|i| i.v)),
                    _ => return Err(outside("APPENDS", "list", at)),
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
