#!/usr/bin/env python3
"""Turn photographs into MobileNetV2 inputs for `knapsec calibrate` / `knapsec eval --model`
(`npy:DIR` data). Needs numpy and Pillow only (no torch).

Usage:  prepare_photos.py OUT_DIR IMAGE [IMAGE ...]

For each `NAME.EXT`, writes `OUT_DIR/NAME.npy`: float32 `[3, 224, 224]`, torchvision's standard
ImageNet evaluation transform done with Pillow exactly as torchvision does it on PIL images:
`Resize(256)` (shorter side 256, bilinear with Pillow's antialiasing), `CenterCrop(224)`,
scaling to [0, 1] and normalisation with the ImageNet mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225). Grey images are converted to RGB.

With `--uint8`, writes the uint8 crop before normalisation instead (the form of the fixtures in
`archs/mobilenet/tests/fixtures`, used to check this script against them).
"""

import os
import sys

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def crop(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    # torchvision's `_compute_resized_output_size`: the long side is truncated, not rounded.
    new_short, new_long = 256, int(256 * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def main(argv):
    raw = "--uint8" in argv
    argv = [a for a in argv if a != "--uint8"]
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, images = argv[1], argv[2:]
    os.makedirs(out, exist_ok=True)
    for path in images:
        chw = crop(path)
        name = os.path.splitext(os.path.basename(path))[0]
        x = chw if raw else ((chw.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)
        tmp = os.path.join(out, f".{name}.npy.tmp")
        with open(tmp, "wb") as f:
            np.save(f, x)
        os.replace(tmp, os.path.join(out, f"{name}.npy"))
        print(f"{path} -> {os.path.join(out, name + '.npy')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
