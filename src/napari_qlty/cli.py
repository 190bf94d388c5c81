"""The command line: ``napari-qlty plan | export | predict`` for the jobs without a screen."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tqdm import tqdm

from .core.grid import Grid, parse_per_axis, per_axis
from .core.intensity import MODES as NORMALISATIONS
from .core.intensity import Normalisation
from .io.sources import open_source
from .core.weights import MODES, Weighting
from .io.formats import StoreError


def int_or_tuple(text: str) -> int | tuple[int, ...]:
    """'128' or '64,128,128'."""
    try:
        return parse_per_axis(text, "value")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("value: ")) from None


def add_grid_options(p: argparse.ArgumentParser, window=None, step=None, border=0) -> None:
    g = p.add_argument_group("grid (one value for all axes, or one per axis: 64,128,128)")
    g.add_argument("--window", type=int_or_tuple, required=window is None, default=window)
    g.add_argument("--step", type=int_or_tuple, required=step is None, default=step)
    g.add_argument("--border", type=int_or_tuple, default=border)
    g.add_argument("--pad", choices=["reflect", "constant"], default=None,
                   help="pad axes smaller than the window (default: error)")
    g.add_argument("--axes", default=None, help="the input's axes, e.g. zyx, czyx or zyxc (default: from metadata)")
    g.add_argument("--each-time-point", action="store_true",
                   help="run every time point on its own (t becomes the image axis: a 3D model on a time-lapse)")


def add_normalisation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("intensity normalisation (statistics of the whole volume, never per window)")
    g.add_argument("--normalise", choices=list(NORMALISATIONS), default=None,
                   help="none, percentile (--low/--high percentiles map to 0/1, default 1 and 99.8), "
                        "mean-std, or range (--low/--high values map to 0/1); default: the model's own, else none")
    g.add_argument("--low", type=float, default=None)
    g.add_argument("--high", type=float, default=None)


def normalisation_of(args):
    if args.normalise is None:
        if args.low is not None or args.high is not None:
            raise ValueError("--low and --high need --normalise percentile or range")
        return None
    return Normalisation(args.normalise, args.low, args.high)


def open_input(path: str, args):
    src = open_source(path, axes=args.axes)
    return src.time_as_images() if getattr(args, "each_time_point", False) else src


def make_grid(args, spatial_shape) -> Grid:
    return Grid(spatial_shape, args.window, args.step, args.border, pad=args.pad)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-qlty", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="show the window grid (and the labels it keeps) without running a model")
    p.add_argument("input", help="image: zarr, OME-Zarr, TIFF, MRC, .npy or a zarr URL")
    add_grid_options(p)
    p.add_argument("--labels", help="sparse labels: also count the windows an export keeps (Table 2)")
    p.add_argument("--ignore-label", type=int, default=-1)
    p.add_argument("--min-labelled", type=int, default=1)

    p = sub.add_parser("export", help="write cleaned training pairs (image + sparse labels) to zarr")
    p.add_argument("input", help="image")
    p.add_argument("labels", help="sparse labels, ignore-label where unlabelled")
    p.add_argument("output", help="output .zarr")
    add_grid_options(p)
    p.add_argument("--ignore-label", type=int, default=-1)
    p.add_argument("--min-labelled", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("predict", help="run a model over a volume into a zarr store (resumable)")
    p.add_argument("input", help="image")
    p.add_argument("output", help="output .zarr (probabilities and/or labels)")
    p.add_argument("--model", required=True,
                   help="a napari-qlty checkpoint, a TorchScript file, a torch.export .pt2, or "
                        "state_dict.pt::package.module:factory (the factory is code you choose to run)")
    add_grid_options(p)
    p.add_argument("--border-weight", type=float, default=1.0)
    p.add_argument("--weighting", choices=[m for m in MODES if m != "map"], default="border")
    p.add_argument("--batch-size", default="4", help="windows per batch, or auto")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--memory-budget", default=None, help="e.g. 2GiB (default: half the free memory, <= 4GiB)")
    p.add_argument("--postprocess", choices=["softmax", "sigmoid"], default=None)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="labels of a one-channel model: value >= threshold, after a sigmoid (default 0.5)")
    add_normalisation_options(p)
    p.add_argument("--outputs", choices=["both", "probabilities", "labels"], default="both")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--chunks", type=int_or_tuple, default=None,
                   help="output chunk edge per axis (default 128 in 3D, 1024 in 2D)")
    p.add_argument("--workers", type=int, default=1, help="regions run at once on local threads")
    p.add_argument("--scheduler", default=None, help="a dask scheduler address (tcp://host:8786)")
    p.add_argument("--overwrite", action="store_true", help="replace whatever is at OUTPUT")
    return parser


def cmd_plan(args) -> int:
    from .core.pairs import select_windows
    from .io.sources import open_source

    src = open_source(args.input, axes=args.axes)
    grid = make_grid(args, src.shape[2:])
    print(f"input      {src.describe()}")
    print(f"grid       window {grid.window}, step {grid.step}, border {grid.border}")
    print(f"windows    {' x '.join(map(str, grid.counts))} = {len(grid)} per image, "
          f"{len(grid) * src.shape[0]} in all")
    print(f"duplication {grid.duplication:.2f} (voxels in windows / voxels)")
    if args.labels:
        labels = open_source(args.labels, axes=args.axes)
        kept, stats = select_windows(_label_view(labels), grid, ignore_label=args.ignore_label,
                                     min_labelled=args.min_labelled)
        print(stats.table())
    return 0


def _label_view(src):
    """A (N, C=1, *spatial) source as (N, *spatial)."""
    if src.shape[1] != 1:
        raise ValueError(f"labels must have one channel, got {src.shape[1]}")
    return src


def cmd_export(args) -> int:
    from .io.pairs_store import export_pairs
    from .io.sources import open_source

    image = open_source(args.input, axes=args.axes)
    labels = _label_view(open_source(args.labels, axes=args.axes))
    grid = make_grid(args, image.shape[2:])
    bar = None
    stats = None
    for written, total, stats in export_pairs(image, labels, grid, args.output, ignore_label=args.ignore_label,
                                              min_labelled=args.min_labelled, overwrite=args.overwrite):
        if bar is None:
            bar = tqdm(total=total, unit="pair", desc="export")
        bar.update(written - bar.n)
    if bar is not None:
        bar.close()
    if stats is not None:
        print(stats.table())
    print(f"wrote {args.output}")
    return 0


def cmd_predict(args) -> int:
    from .models import ModelSpec
    from .run.runner import iter_predict

    src = open_input(args.input, args)
    grid = make_grid(args, src.shape[2:])
    weighting = Weighting(args.weighting, border_weight=args.border_weight)
    batch_size = args.batch_size
    if batch_size != "auto":
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"--batch-size must be an int >= 1 or auto, got {batch_size!r}") from None
    bar = None
    for event in iter_predict(
        ModelSpec.parse(args.model), src, grid, args.output,
        weighting=weighting, batch_size=batch_size, device=args.device,
        memory_budget=args.memory_budget, probabilities=args.outputs in ("both", "probabilities"),
        labels=args.outputs in ("both", "labels"), dtype=args.dtype, postprocess=args.postprocess,
        threshold=args.threshold, normalise=normalisation_of(args), workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
        chunks=None if args.chunks is None else per_axis(args.chunks, grid.ndim, "--chunks"),
    ):
        if event.kind == "start":
            print(f"input  {src.describe()}")
            print(f"grid   {' x '.join(map(str, grid.counts))} windows per image; {event.message}")
            bar = tqdm(total=event.windows_total, initial=event.windows_done, unit="window", desc="predict")
        elif event.kind == "region" and bar is not None:
            bar.update(event.windows_done - bar.n)
        elif event.kind == "done":
            if bar is not None:
                bar.close()
            print(event.message)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"plan": cmd_plan, "export": cmd_export, "predict": cmd_predict}[args.command](args)
    except (ValueError, TypeError, StoreError, FileNotFoundError, ImportError, IndexError) as err:
        print(f"napari-qlty {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-qlty {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
