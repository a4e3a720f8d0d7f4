#!/usr/bin/env python3
"""PNG files written by Pillow, for tests/test_png.cpp to decode.

Every image's pixels follow one formula, which the C++ test recomputes:

    value(x, y, c) = (x * 37 + y * 11 + c * 71) % 256      (c = channel; gray uses c = 0)

Files in --out (default tests/fixtures/png):
    rgb_text.png        RGB, 13x7, with tEXt (ASCII and Latin-1), zTXt and iTXt (non-Latin-1)
    rgba.png            RGBA, 9x6
    gray.png            8-bit gray, 5x4                -> decodes to RGB (v, v, v)
    gray_alpha.png      gray + alpha, 5x4              -> RGBA (v, v, v, value(c=1))
    gray16.png          16-bit gray, 5x4, v * 257      -> RGB (v, v, v)
    bilevel.png         1-bit, 6x3, (x + y) % 2        -> RGB 0 or 255
    palette_trns.png    palette, 6x3, index (x + 2y) % 4 into PALETTE, index 0 transparent
                        -> RGBA, alpha 0 for index 0, else 255

Run: .venv/bin/python tools/golden/make_png_golden.py [--out tests/fixtures/png]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, PngImagePlugin

PALETTE = [(255, 0, 0), (0, 128, 0), (10, 20, 250), (200, 200, 7)]
TEXT = [
    ("Title", "tessera"),
    ("Comment", "caf\u00e9 na\u00efve \u00d7 \u00bd"),  # Latin-1, so tEXt
    ("Zipped", "compressed " * 20),  # zTXt
    ("parameters", "prompt: \u65e5\u672c\u306e\u732b \u2713, steps: 20"),  # iTXt
]


def formula(width: int, height: int, channels: int) -> np.ndarray:
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    return ((x * 37 + y * 11 + c * 71) % 256).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "png"))
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    info = PngImagePlugin.PngInfo()
    info.add_text(*TEXT[0])
    info.add_text(*TEXT[1])
    info.add_text(*TEXT[2], zip=True)
    info.add_itxt(*TEXT[3])
    Image.fromarray(formula(13, 7, 3), "RGB").save(os.path.join(out, "rgb_text.png"), pnginfo=info)
    Image.fromarray(formula(9, 6, 4), "RGBA").save(os.path.join(out, "rgba.png"))
    Image.fromarray(formula(5, 4, 1)[:, :, 0], "L").save(os.path.join(out, "gray.png"))
    Image.fromarray(formula(5, 4, 2), "LA").save(os.path.join(out, "gray_alpha.png"))
    Image.fromarray(formula(5, 4, 1)[:, :, 0].astype(np.uint16) * 257).save(os.path.join(out, "gray16.png"))
    bits = ((np.add.outer(np.arange(3), np.arange(6)) % 2) * 255).astype(np.uint8)
    Image.fromarray(bits, "L").convert("1").save(os.path.join(out, "bilevel.png"))
    index = ((np.arange(6)[None, :] + 2 * np.arange(3)[:, None]) % 4).astype(np.uint8)
    pal = Image.fromarray(index, "P")
    pal.putpalette([v for rgb in PALETTE for v in rgb])
    pal.save(os.path.join(out, "palette_trns.png"), transparency=0)

    # Check what was written, so the fixtures mean what the docstring says.
    for name, mode in [("rgb_text.png", "RGB"), ("rgba.png", "RGBA"), ("gray.png", "L"), ("gray_alpha.png", "LA"),
                       ("gray16.png", "I;16"), ("bilevel.png", "1"), ("palette_trns.png", "P")]:
        with Image.open(os.path.join(out, name)) as im:
            assert im.mode == mode, (name, im.mode)
    with Image.open(os.path.join(out, "rgb_text.png")) as im:
        assert im.text == dict(TEXT), im.text
    print(f"PNG fixtures -> {out}")


if __name__ == "__main__":
    main()
