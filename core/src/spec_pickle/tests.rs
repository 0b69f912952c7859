//! Unit tests of the spec pickle import and export: round trips, reference files, and hostile
//! pickles (bombs, deep nesting, truncation) refused with an error.

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
    let e =
        from_reference_pickle(&array_pickle(&[1 << 32, 1 << 32, 2], "i4", &[]), "x").unwrap_err();
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
