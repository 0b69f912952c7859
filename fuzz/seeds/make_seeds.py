"""Writes the seed corpus of every fuzz target (one folder per target beside this script).

Python standard library only (no numpy): the formats are written byte by byte, so each seed
is a small, valid example of what its parser reads. The reference pickles are copies of
tests/fixtures/reference_specs (made with numpy by the script there).

    python3 fuzz/seeds/make_seeds.py
"""
import io
import json
import os
import pickle
import shutil
import struct
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- spec_pickle: the reference's files, and a pickle that is not a spec --------------------
for name in ["resnet_like.pickle", "tinynet_mixed.pickle", "tinynet_protocol2.pickle"]:
    with open(os.path.join(ROOT, "tests/fixtures/reference_specs", name), "rb") as f:
        put("spec_pickle", name, f.read())
put("spec_pickle", "plain_dict.pickle", pickle.dumps({"a": [1, 2, (3, 4)], "b": b"xy"}, protocol=4))

# --- block_spec_ron / block_spec_json ------------------------------------------------------
put("block_spec_ron", "toy.ron",
    '(format: 1, arch: "fuzz", layers: {"a": [(2, 2), Identity], "b": [(1, 1), Zero, (1, 2)]})')
put("block_spec_ron", "empty.ron", '(format: 1, arch: "x", layers: {})')
put("block_spec_json", "toy.json", json.dumps(
    {"format": 1, "arch": "fuzz", "layers": {"a": [[2, 2], "Identity"], "b": [[1, 1], "Zero", [1, 2]]}}))
put("block_spec_json", "empty.json", '{"format": 1, "arch": "x", "layers": {}}')

# --- secure_model: model.ron ----------------------------------------------------------------
TINY = """(format: 1, arch: "fuzz", frac_bits: 12, output_kind: Classification,
nodes: [
 (name: "input", op: Input, inputs: [], shape: (1, 4, 4)),
 (name: "conv", op: Conv2d(weight: "conv.weight", bias: Some("conv.bias"), kernel: (3, 3),
  stride: (1, 1), padding: (1, 1), dilation: (1, 1), groups: 1), inputs: [0], shape: (2, 4, 4)),
 (name: "gap", op: GlobalAvgPool, inputs: [1], shape: (2, 1, 1)),
 (name: "fc", op: Linear(weight: "fc.weight", bias: None), inputs: [2], shape: (3, 1, 1)),
])"""
put("secure_model", "tiny.ron", TINY)
EVERY_OP = """(format: 1, arch: "fuzz", frac_bits: 8, output_kind: Segmentation,
nodes: [
 (name: "input", op: Input, inputs: [], shape: (2, 6, 6)),
 (name: "dw", op: Conv2d(weight: "dw.weight", bias: None, kernel: (3, 3), stride: (2, 2),
  padding: (1, 1), dilation: (1, 1), groups: 2), inputs: [0], shape: (2, 3, 3)),
 (name: "relu", op: BlockRelu(layer: "relu", blocks: [(2, 2), Identity]), inputs: [1], shape: (2, 3, 3)),
 (name: "r6", op: Relu6(layer: "r6"), inputs: [2], shape: (2, 3, 3)),
 (name: "ap", op: AvgPool(kernel: (3, 3), stride: (1, 1), padding: (1, 1), count_include_pad: false), inputs: [3], shape: (2, 3, 3)),
 (name: "mp", op: MaxPool(kernel: (3, 3), stride: (1, 1), padding: (1, 1)), inputs: [3], shape: (2, 3, 3)),
 (name: "add", op: Add, inputs: [4, 5], shape: (2, 3, 3)),
 (name: "gap", op: GlobalAvgPool, inputs: [6], shape: (2, 1, 1)),
 (name: "bc", op: Broadcast(height: 3, width: 3), inputs: [7], shape: (2, 3, 3)),
 (name: "cat", op: Concat, inputs: [6, 8], shape: (4, 3, 3)),
])"""
put("secure_model", "every_op.ron", EVERY_OP)


# --- safetensors (model_weights, distortion_table) --------------------------------------------
def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, offset, data = {}, 0, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def i64s(vals):
    return struct.pack("<%dq" % len(vals), *vals)


def f64s(vals):
    return struct.pack("<%dd" % len(vals), *vals)


put("model_weights", "tiny.safetensors", safetensors([
    ("conv.bias", "I64", [2], i64s([-5, 7])),
    ("conv.weight", "I64", [2, 1, 3, 3], i64s(range(18))),
    ("fc.weight", "I64", [3, 2], i64s([1, -1, 2, -2, 3, -3])),
]))
put("model_weights", "empty.safetensors", safetensors([]))

meta = {
    "format": "knapsec-distortion",
    "format_version": "1",
    "arch": "fuzz",
    "layers": json.dumps(["a", "b"]),
    "candidates": json.dumps({"a": [[1, 1], [2, 2], "Identity"], "b": [[1, 1], "Identity"]}),
    "provenance": json.dumps({"weights_hash": "0" * 64, "sample_seed": 1, "sample_count": 8,
                              "metric": "mse"}),
}
put("distortion_table", "toy.safetensors", safetensors([
    ("a", "F64", [2, 3], f64s([0.0, 0.5, 1.0, 0.0, 0.25, 2.0])),
    ("b", "F64", [3, 2], f64s([0.0, 1.0, 0.0, 0.5, 0.0, 3.0])),
], meta))


# --- npz_instance ------------------------------------------------------------------------
def npy(descr, shape, raw, fortran=False):
    shape_text = "(%s)" % ("".join("%d, " % d for d in shape) if len(shape) != 1 else "%d," % shape[0])
    h = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape_text)
    h += " " * (-(10 + len(h) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + raw


def npz(arrays, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in arrays:
            z.writestr(name + ".npy", data)
    return buf.getvalue()


INF = float("inf")
arrays = [
    ("costs", npy("<i8", (2, 3), i64s([4, 2, 0, 1, 0, 0]))),
    ("values", npy("<f8", (2, 3), f64s([1.0, 2.5, 5.0, 0.0, 1.0, INF]))),
    ("counts", npy("<i4", (2,), struct.pack("<2i", 3, 2))),
]
put("npz_instance", "stored.npz", npz(arrays))
put("npz_instance", "deflated.npz", npz(arrays, zipfile.ZIP_DEFLATED))
put("npz_instance", "fortran.npz", npz([
    ("costs", npy("<i8", (2, 2), i64s([1, 3, 2, 4]), fortran=True)),
    ("values", npy("<f8", (2, 2), f64s([0.5, 0.25, 1.0, 2.0]))),
    ("counts", npy("<i8", (2,), i64s([2, 2]))),
]))


# --- idx -------------------------------------------------------------------------------------
def idx(dims, data):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


put("idx", "images.idx3", idx([2, 3, 3], range(18)))
put("idx", "labels.idx1", idx([4], [0, 9, 3, 1]))


# --- architecture options (RON) ---------------------------------------------------------------
put("arch_options", "default.ron", b"()\n")
put("arch_options", "fashion.ron",
    b"(input_channels: Some(1), input_height: Some(28), input_width: Some(28), classes: Some(10))\n")
put("arch_options", "cifar.ron",
    b"(input_height: Some(32), input_width: Some(32), base_width: Some(16), classes: Some(100))\n")
put("arch_options", "relu.ron", b'(input_height: Some(512), input_width: Some(512), variant: Some("relu"))\n')
put("arch_options", "huge.ron", b'(input_height: Some(4294967295), input_width: Some(1), variant: Some("x"))\n')
