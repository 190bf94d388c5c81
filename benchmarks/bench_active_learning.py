#!/usr/bin/env python
"""Do strokes at the suggested (most unsure) spots raise F1 faster than strokes at random spots? (issue 12)

On the small sample's volume (``DEFAULT_SHAPE``, 64 x 192 x 160, ``make_tomogram(shape,
seed)`` with its sparse labels, 0.06 % of the voxels), for each seed: round 0 "Train"s
the recipe's two networks on the sparse labels; then, for each strategy, every round
picks ``--spots`` spots of the Train widget's spot grid (half its training windows,
overlapping by half) on the last prediction, paints at most ``--filament`` filament and
``--background`` background voxels at each (``paint_spot``, correcting the prediction's
mistakes first), and "Train more"s the last model on the labels as they are now. Every
round predicts the whole volume with uncertainty (the recipe's inference settings) and
is scored against the ground truth on every voxel (macro F1 and filament F1, as
``napari_qlty.train.metrics`` computes them). See :mod:`napari_qlty.demo.active`.

* ``suggested``: the top spots by the widget's default uncertainty (the networks'
  disagreement for the recipe's ensemble);
* ``apart``: the same ranking, skipping spots that overlap one already taken;
* ``random``: spots drawn uniformly from the same grid (no repeats within a round);
* ``none``: no strokes, "Train more" on the labels as they were (the control).

The training budget is in steps, not seconds (``--epochs`` x ``--steps-per-epoch`` per
network for "Train", a quarter of the epochs for "Train more"), so every strategy gets
the same compute whatever the machine's load; torch runs one thread. The k-th spot of
round r paints from the same random stream in every strategy.

``--clearance 0`` lets the background strokes touch the filaments (a person correcting a
filament drawn too thick), where the sample's annotator keeps 2 voxels away; ``--tag``
names such a variant in the records.

Run (docs/training.md): ``python benchmarks/bench_active_learning.py --seeds 10 11 12 13 14
--log al.jsonl --figure docs/figures/active_learning.png``
(about 4 min a seed on 2 shared cores), then ``--clearance 0 --tag edges --strategies
suggested apart random``. Prints one JSON line per (strategy, seed, round) and markdown
tables (mean ± standard deviation over the seeds, the paired difference to the same
variant's ``random``, the predicted filament share); ``--from LOG ...`` redraws the tables
and the figure from logs. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (64, 192, 160)
COLOURS = {"suggested": (214, 96, 20), "apart": (40, 150, 60), "random": (60, 100, 200), "none": (120, 120, 120)}


def colour(strategy: str) -> tuple[int, int, int]:
    """The strategy's colour; a tagged variant's ("suggested (entropy)") darker."""
    base, _, tag = strategy.partition(" (")
    rgb = COLOURS.get(base, (0, 0, 0))
    return tuple(int(c * 0.55) for c in rgb) if tag else rgb


def run(args) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from napari_qlty.data.tomogram import make_tomogram
    from napari_qlty.demo.active import Simulation, iter_loop

    simulation = Simulation(spots=args.spots, filament=args.filament, background=args.background,
                            clearance=args.clearance,
                            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, kind=args.kind)
    print(json.dumps({"shape": SHAPE, "annotated": args.annotated, "rounds": args.rounds, "strategies": args.strategies,
                      "simulation": {k: v for k, v in vars(simulation).items() if k not in ("recipe", "overrides")}}),
          flush=True)
    rows = []
    for seed in args.seeds:
        tomo = make_tomogram(SHAPE, seed=seed, annotated_fraction=args.annotated)
        with tempfile.TemporaryDirectory(prefix="bench-active-") as work:
            t0 = time.perf_counter()
            for record in iter_loop(work, tomo, args.strategies, args.rounds, seed, simulation):
                record["wall_s"] = round(time.perf_counter() - t0, 1)
                if args.tag:
                    record["strategy"] += f" ({args.tag})"
                line = json.dumps(record)
                print(line, flush=True)
                if args.log:
                    with open(args.log, "a") as f:
                        f.write(line + "\n")
                rows.append(record)
    return rows


METRICS = ("macro", "filament", "share")


def summary(rows: list[dict]) -> dict:
    """{(strategy, round): {metric: {seed: value}}}, with round "1-R": each seed's mean
    over the rounds after the first."""
    out: dict = {}
    for r in rows:
        if "strategy" in r:
            cell = out.setdefault((r["strategy"], r["round"]), {m: {} for m in (*METRICS, "painted")})
            for m in METRICS:
                cell[m][r["seed"]] = r[m]
            cell["painted"][r["seed"]] = r.get("painted") or [0, 0]
    last = max((n for _, n in out), default=0)
    for x in list(dict.fromkeys(k[0] for k in out)):
        later = [out[(x, n)] for n in range(1, last + 1) if (x, n) in out]
        if later:
            seeds = set.intersection(*(set(c["macro"]) for c in later))
            out[(x, f"1-{last}")] = {m: {k: float(np.mean([c[m][k] for c in later])) for k in seeds} for m in METRICS}
            out[(x, f"1-{last}")]["painted"] = {k: np.sum([c["painted"][k] for c in later], axis=0).tolist()
                                                for k in seeds}
    return out


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _ms(values, digits: int = 3) -> str:
    mean, sd = _mean_sd(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(rows: list[dict]) -> str:
    """Markdown: F1 per round and strategy, the paired difference to random, the
    predicted filament share, and the voxels painted."""
    s = summary(rows)
    strategies = list(dict.fromkeys(k[0] for k in s))
    rounds = list(dict.fromkeys(k[1] for k in s))
    def baseline(x: str) -> str:  # the same variant's random spots
        tag = x.partition(" (")[2]
        return f"random ({tag}" if tag else "random"

    others = [x for x in strategies if x.partition(" (")[0] not in ("random", "none") and baseline(x) in strategies]
    head = (["round"] + [f"{x} {m} F1" for m in ("macro", "filament") for x in strategies]
            + [f"{x} − {baseline(x)}, filament F1" for x in others])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in rounds:
        cells = [str(n)]
        for m in ("macro", "filament"):
            cells += [_ms(s[(x, n)][m].values()) if (x, n) in s else "–" for x in strategies]
        for x in others:
            a, b = s.get((x, n)), s.get((baseline(x), n))
            seeds = sorted(set(a["filament"]) & set(b["filament"])) if a and b else []
            cells.append(_ms(a["filament"][k] - b["filament"][k] for k in seeds) if seeds else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| round | " + " | ".join(f"{x}: filament predicted (%)" for x in strategies) + " |",
              "|" + "---|" * (1 + len(strategies))]
    for n in rounds:
        lines.append(f"| {n} | " + " | ".join(_ms(s[(x, n)]["share"].values(), 2) if (x, n) in s else "–"
                                           for x in strategies) + " |")
    seeds = sorted({r["seed"] for r in rows if "seed" in r})
    total = [k for k in s if isinstance(k[1], str)]
    painted = {x: np.mean([v for v in s[(x, n)]["painted"].values()], axis=0) for x, n in total}
    lines += ["", f"Seeds {', '.join(map(str, seeds))}; mean ± standard deviation over the seeds; round "
              f"{total[0][1] if total else '–'}: each seed's mean over those rounds. Voxels painted in all "
              "rounds (filament / background, mean over the seeds): "
              + ", ".join(f"{x} {p[0]:.0f} / {p[1]:.0f}" for x, p in painted.items()) + "."]
    return "\n".join(lines)


def figure(rows: list[dict], path: str | Path) -> None:
    """Macro and filament F1 per round, mean ± standard deviation over the seeds, drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    s = {k: v for k, v in summary(rows).items() if isinstance(k[1], int)}
    strategies = list(dict.fromkeys(k[0] for k in s))
    rounds = sorted({k[1] for k in s})
    pw, ph, left, top, gap = 400, 300, 60, 40, 40
    canvas = Image.new("RGB", (2 * (left + pw) + gap + 20, top + ph + 90), "white")
    draw = ImageDraw.Draw(canvas)
    for p, metric in enumerate(("macro", "filament")):
        x0 = left + p * (left + pw + gap)
        bars = [_mean_sd(c[metric].values()) for c in s.values()]
        lo = np.floor(min(m - d for m, d in bars) * 20) / 20
        hi = np.ceil(max(m + d for m, d in bars) * 20) / 20
        hi = max(hi, lo + 0.05)

        def at(n, v, x0=x0, lo=lo, hi=hi):
            return (x0 + (n - rounds[0]) / max(1, rounds[-1] - rounds[0]) * pw, top + ph - (v - lo) / (hi - lo) * ph)

        draw.rectangle((x0, top, x0 + pw, top + ph), outline=(0, 0, 0))
        for t in np.arange(lo, hi + 1e-9, 0.05 if hi - lo <= 0.3 else 0.1):
            _, y = at(rounds[0], t)
            draw.line((x0 - 4, y, x0 + pw, y), fill=(225, 225, 225))
            draw.text((x0 - 44, y - 7), f"{t:.2f}", fill=(0, 0, 0), font=font)
        for n in rounds:
            x, _ = at(n, lo)
            draw.text((x - 4, top + ph + 6), str(n), fill=(0, 0, 0), font=font)
        draw.text((x0, 12), f"{metric} F1 (whole volume) against round", fill=(0, 0, 0), font=font)
        for k, x in enumerate(strategies):
            rgb, shift = colour(x), (k - (len(strategies) - 1) / 2) * 5
            points = []
            for n in rounds:
                if (x, n) not in s:
                    continue
                mean, sd = _mean_sd(s[(x, n)][metric].values())
                (px, py), (_, ya), (_, yb) = at(n, mean), at(n, mean - sd), at(n, mean + sd)
                px += shift
                draw.line((px, ya, px, yb), fill=rgb, width=2)
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=rgb)
                points.append((px, py))
            draw.line(points, fill=rgb, width=2)
    y = top + ph + 34
    x = left
    for k, name in enumerate(strategies):
        draw.line((x, y + 8, x + 24, y + 8), fill=colour(name), width=3)
        draw.text((x + 30, y), name, fill=(0, 0, 0), font=font)
        x += 40 + int(draw.textlength(name, font=font))
    seeds = sorted({r["seed"] for r in rows if "seed" in r})
    draw.text((left, y + 24), f"mean ± standard deviation over seeds {', '.join(map(str, seeds))}; round 0: "
              "Train on the sparse labels, then each round paints spots and trains more", fill=(0, 0, 0), font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12, 13, 14])
    p.add_argument("--rounds", type=int, default=5, help="rounds after the first")
    p.add_argument("--strategies", nargs="+", default=["suggested", "random", "none"],
                   choices=["suggested", "apart", "random", "none"])
    p.add_argument("--annotated", type=float, default=6e-4,
                   help="share of the voxels the start's sparse labels cover (the sample's: 6e-4)")
    p.add_argument("--spots", type=int, default=5, help="spots painted per round")
    p.add_argument("--filament", type=int, default=12, help="filament voxels painted per spot (at most)")
    p.add_argument("--background", type=int, default=60, help="background voxels painted per spot (at most)")
    p.add_argument("--clearance", type=int, default=2,
                   help="voxels background strokes keep from any filament (the sample's annotator: 2)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per network for Train (Train more: a quarter)")
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--kind", default=None, choices=["windows", "members", "entropy"],
                   help="uncertainty to rank spots by (default: the widget's)")
    p.add_argument("--tag", default=None, help="a variant's name, added to the strategies' (for --from with others)")
    p.add_argument("--log", default=None, help="also append the JSON lines to this file")
    p.add_argument("--figure", default=None, help="draw the curves into this PNG")
    p.add_argument("--from", dest="source", nargs="+", default=None, help="read JSON lines from these logs instead")
    args = p.parse_args(argv)
    if args.source:
        rows = [json.loads(line) for f in args.source for line in Path(f).read_text().splitlines()
                if line.startswith("{")]
        rows = [r for r in rows if "strategy" in r and r["seed"] in args.seeds]
    else:
        rows = run(args)
    print(table(rows))
    if args.figure:
        figure(rows, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
