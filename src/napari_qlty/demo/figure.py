"""The paper's Figure 2: image, probabilities, annotations, truth and prediction with
the window grid and its seams."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import Grid

PURPLE = (170, 60, 220)


# -- 6. the figure ------------------------------------------------------------------------
_HEAT = np.array([  # black-red-yellow-white ramp for the probability overlay
    [0.0, 0, 0, 0], [0.35, 180, 20, 20], [0.7, 255, 160, 0], [1.0, 255, 255, 180]], dtype=np.float64)


def heat(p: np.ndarray) -> np.ndarray:
    rgb = np.stack([np.interp(p, _HEAT[:, 0], _HEAT[:, c]) for c in (1, 2, 3)], axis=-1)
    return rgb


def gray(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99.5])
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return np.repeat(g[..., None], 3, axis=-1)


def blend(base: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return base * (1 - a) + np.asarray(colour, dtype=np.float64) * a


def figure2(image2d, prob2d, ann2d, truth2d, pred2d, grid: Grid, z: int, path_list, title: str) -> None:
    """Three panels of one XY slice: the data and the sparse labels; the filament
    probability with the windows and seams (purple); errors against the ground truth."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = image2d.shape
    scale = max(1, round(480 / max(h, w)))
    base = gray(image2d)
    a = base.copy()
    a = blend(a, (40, 220, 90), (ann2d == 1) * 0.9)
    a = blend(a, (60, 120, 255), (ann2d == 0) * 0.7)
    b = blend(base, heat(prob2d), np.clip(prob2d * 1.2, 0, 0.85))
    c = base * 0.55
    c = blend(c, (255, 215, 0), (pred2d & truth2d) * 0.9)      # found
    c = blend(c, (235, 40, 40), (pred2d & ~truth2d) * 0.9)     # false positive
    c = blend(c, (40, 200, 255), (~pred2d & truth2d) * 0.9)    # missed
    panels = [a, b, c]
    titles = ["image + sparse labels (green filament, blue background)",
              "filament probability, windows (white), seams (purple)",
              "vs ground truth: found (yellow), false (red), missed (cyan)"]
    font = ImageFont.load_default(size=14) if _font_sizes() else ImageFont.load_default()
    pad, top, bottom = 12, 30, 34
    pw, ph = w * scale, h * scale
    canvas = Image.new("RGB", (len(panels) * (pw + pad) + pad, ph + top + bottom), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (panel, t) in enumerate(zip(panels, titles)):
        img = Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8)).resize((pw, ph), Image.NEAREST)
        x0 = pad + k * (pw + pad)
        canvas.paste(img, (x0, top))
        draw.text((x0, 8), t, fill=(0, 0, 0), font=font)
        if k == 1:
            _windows_and_seams(draw, grid, x0, top, scale, h, w)
    draw.text((pad, top + ph + 8), title, fill=(0, 0, 0), font=font)
    for path in path_list:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)


def _font_sizes() -> bool:
    from PIL import ImageFont

    try:
        ImageFont.load_default(size=14)
        return True
    except TypeError:  # Pillow < 10.1
        return False


def _windows_and_seams(draw, grid: Grid, x0: int, y0: int, scale: int, h: int, w: int) -> None:
    ys, xs = grid.axis_origins[1], grid.axis_origins[2]
    wy, wx = grid.window[1], grid.window[2]
    for k, oy in enumerate(ys):
        for j, ox in enumerate(xs):
            inset = 2 * ((k + j) % 2)  # neighbouring outlines side by side, not on top of each other
            r = (x0 + int(ox) * scale + inset, y0 + int(oy) * scale + inset,
                 x0 + min(int(ox) + wx, w) * scale - 1 - inset, y0 + min(int(oy) + wy, h) * scale - 1 - inset)
            draw.rectangle(r, outline=(255, 255, 255), width=1)
    seams = grid.seams()
    for s in seams[1]:
        yy = y0 + round(float(s) * scale)
        draw.line([(x0, yy), (x0 + w * scale - 1, yy)], fill=PURPLE, width=2)
    for s in seams[2]:
        xx = x0 + round(float(s) * scale)
        draw.line([(xx, y0), (xx, y0 + h * scale - 1)], fill=PURPLE, width=2)
