#!/usr/bin/env python3
"""Draws the app icons (RGBA PNG, as Tauri requires) into icons/.

Standard library only, so it runs on a fresh machine: three overlapping
circles (the people sharing one agent) on a dark rounded square, each pixel
supersampled 4x4 for smooth edges. The output is deterministic; the PNGs are
committed and this script only needs running again to change the design.
"""
import os
import struct
import zlib

SIZES = {"32x32.png": 32, "128x128.png": 128, "128x128@2x.png": 256, "icon.png": 512}
BACKGROUND = (24, 27, 38)
CIRCLES = [  # centre x, centre y, radius (fractions of the side), colour
    (0.38, 0.40, 0.22, (94, 129, 244)),
    (0.62, 0.40, 0.22, (236, 110, 173)),
    (0.50, 0.62, 0.22, (72, 199, 142)),
]
CORNER = 0.22  # rounded-square corner radius, fraction of the side
SAMPLES = 4


def inside_rounded_square(x, y):
    cx = min(max(x, CORNER), 1 - CORNER)
    cy = min(max(y, CORNER), 1 - CORNER)
    return (x - cx) ** 2 + (y - cy) ** 2 <= CORNER**2


def sample(x, y):
    """Colour and coverage of one point in the unit square."""
    if not inside_rounded_square(x, y):
        return (0, 0, 0), 0.0
    colour = BACKGROUND
    for ccx, ccy, r, c in CIRCLES:
        if (x - ccx) ** 2 + (y - ccy) ** 2 <= r * r:
            # Overlaps mix, so the circles read as shared ground.
            colour = c if colour == BACKGROUND else tuple((a + b) // 2 for a, b in zip(colour, c))
    return colour, 1.0


def pixel(px, py, size):
    r = g = b = a = 0.0
    for sy in range(SAMPLES):
        for sx in range(SAMPLES):
            x = (px + (sx + 0.5) / SAMPLES) / size
            y = (py + (sy + 0.5) / SAMPLES) / size
            (cr, cg, cb), cov = sample(x, y)
            r, g, b, a = r + cr * cov, g + cg * cov, b + cb * cov, a + cov
    n = SAMPLES * SAMPLES
    if a == 0:
        return (0, 0, 0, 0)
    return (round(r / a), round(g / a), round(b / a), round(255 * a / n))


def png(size):
    rows = b"".join(
        b"\x00" + bytes(v for px in range(size) for v in pixel(px, py, size)) for py in range(size)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "icons")
    os.makedirs(out, exist_ok=True)
    for name, size in SIZES.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(png(size))


if __name__ == "__main__":
    main()
