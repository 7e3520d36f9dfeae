#!/usr/bin/env python3
"""Pictures of block-sparse masks (docs/block-masks.md): one PNG per mask, drawn from the
table `cptune mask show MASK --json` prints, so each picture is the program's own table. Rows are
query blocks (top to bottom), columns key blocks (left to right); EMPTY white, FULL dark, CAUSAL
the lower triangle of its cell (key <= query, diagonal included). Standard library only.
  scripts/mask_pictures.py [--cptune build/tuner/cptune] [--out docs/masks] [--cell 16] [MASK ...]
Default masks: star:16 strided:16,4 global-local:16,1,2 stream:16,1,3."""
import argparse
import json
import os
import struct
import subprocess
import sys
import zlib

DEFAULT_MASKS = ["star:16", "strided:16,4", "global-local:16,1,2", "stream:16,1,3"]
WHITE, DARK, GRID = (255, 255, 255), (31, 59, 115), (200, 200, 200)


def table(cptune, mask):
    """(N, rows) of the mask as the program reads it."""
    out = subprocess.run([cptune, "mask", "show", mask, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cptune mask show {mask}: {out.stderr.strip()}")
    doc = json.loads(out.stdout)
    if doc.get("kind") != "blocks":
        sys.exit(f"{mask} is not a block mask (kind {doc.get('kind')})")
    return doc["blocks"], doc["rows"]


def pixels(n, rows, cell):
    """RGB rows: a 1-pixel grid around cells of cell x cell pixels."""
    size = n * (cell + 1) + 1
    image = [[GRID] * size for _ in range(size)]
    for q in range(n):
        for k in range(n):
            kind = rows[q][k]
            for y in range(cell):
                for x in range(cell):
                    # A CAUSAL cell keeps the pairs whose key is at most the query: x <= y.
                    dark = kind == "F" or (kind == "C" and x <= y)
                    image[q * (cell + 1) + 1 + y][k * (cell + 1) + 1 + x] = DARK if dark else WHITE
    return image


def write_png(path, image):
    """8-bit RGB PNG: signature, IHDR, one IDAT (filter 0 per row), IEND."""
    height, width = len(image), len(image[0])
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in image)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def file_name(mask):
    """star:16 -> star_16.png, strided:16,4 -> strided_16_4.png."""
    return "".join(c if c.isalnum() or c == "-" else "_" for c in mask) + ".png"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cptune", default="build/tuner/cptune")
    p.add_argument("--out", default="docs/masks")
    p.add_argument("--cell", type=int, default=16, help="pixels per block")
    p.add_argument("masks", nargs="*", default=DEFAULT_MASKS)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for mask in args.masks:
        n, rows = table(args.cptune, mask)
        path = os.path.join(args.out, file_name(mask))
        write_png(path, pixels(n, rows, args.cell))
        print(f"{path}: {mask}, {n} x {n} blocks")


if __name__ == "__main__":
    main()
