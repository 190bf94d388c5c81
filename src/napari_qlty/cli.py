"""The command line: ``napari-qlty plan | export | predict | export-model`` for the jobs without a screen.

Every error is one line naming the flag and its valid range, and the exit status is 2;
nothing the run did not create is ever replaced.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence

from tqdm import tqdm

from .core.grid import Grid, parse_per_axis, per_axis
from .core.intensity import MODES as NORMALISATIONS
from .core.intensity import Normalisation
from .core.labels import DenseLabelsWarning, LabelConvention, LabelView
from .core.pairs import as_label_volume
from .core.speed import PRECISIONS, Speed
from .core.weights import MODES, Weighting
from .io import labels_store
from .io.formats import StoreError
from .io.sources import open_source

#: the flags that fix what the engine's messages call a parameter
FLAGS = {"window": "--window", "step": "--step", "border": "--border", "border_weight": "--border-weight",
         "ignore_label": "--ignore-label", "min_labelled": "--min-labelled", "batch_size": "--batch-size",
         "threshold": "--threshold", "chunks": "--chunks", "levels": "--levels", "downscale": "--downscale",
         "scale": "--scale", "translation": "--translation", "units": "--units", "level": "--level",
         "axes": "--axes"}


def int_or_tuple(text: str) -> int | tuple[int, ...]:
    """'128' or '64,128,128'."""
    try:
        return parse_per_axis(text, "value")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("value: ")) from None


def floats(text: str) -> tuple[float, ...]:
    """'0.5' or '2,0.5,0.5'."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give numbers separated by commas, got {text!r}") from None


def add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--axes", default=None, help="the input's axes, e.g. zyx, czyx or zyxc (default: from metadata)")
    g.add_argument("--level", type=int, default=0,
                   help="for a multiscale input (OME-Zarr, pyramidal TIFF): the level to run on, 0 the finest, "
                        "-1 the coarsest (a quick preview)")
    g.add_argument("--each-time-point", action="store_true",
                   help="run every time point on its own (t becomes the image axis: a 3D model on a time-lapse)")


def add_grid_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("grid (one value for all axes, or one per axis: 64,128,128)")
    g.add_argument("--window", type=int_or_tuple, required=required,
                   help=None if required else "required, except for a bioimage.io package (a size it takes)")
    g.add_argument("--step", type=int_or_tuple, required=required,
                   help=None if required else "required, except for a bioimage.io package (window less 2 halos)")
    g.add_argument("--border", type=int_or_tuple, default=None,
                   help="default 0; a bioimage.io package's halo")
    g.add_argument("--pad", choices=["reflect", "constant"], default=None,
                   help="pad axes smaller than the window (default: error)")
    add_input_options(p)


def add_labels_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labels (a napari-qlty labels store says itself: 0 = unlabelled, 1.. = classes)")
    g.add_argument("--ignore-label", type=int, default=None,
                   help="the value that marks unlabelled voxels in labels that are not ours "
                        "(default -1; every other value is a class)")
    g.add_argument("--min-labelled", type=int, default=1)


def add_normalisation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("intensity normalisation (statistics of the whole volume, never per window)")
    g.add_argument("--normalise", choices=list(NORMALISATIONS), default=None,
                   help="none, percentile (--low/--high percentiles map to 0/1, default 1 and 99.8), "
                        "mean-std, or range (--low/--high values map to 0/1); default: the model's own, else none")
    g.add_argument("--low", type=float, default=None)
    g.add_argument("--high", type=float, default=None)


def normalisation_of(args) -> Normalisation | None:
    if args.normalise is None:
        if args.low is not None or args.high is not None:
            raise ValueError("--low and --high need --normalise percentile or range")
        return None
    return Normalisation(args.normalise, args.low, args.high)


def open_input(path: str, args):
    src = open_source(path, axes=args.axes, level=args.level)
    return src.time_as_images() if args.each_time_point else src


def open_labels(path: str, args, grid: Grid) -> LabelView:
    """The labels as the engine reads them, in the convention their store states, or
    with ``--ignore-label`` as the unlabelled value."""
    src = open_input(path, args)
    if src.shape[1] != 1:
        raise ValueError(f"labels must have one channel, got {src.shape[1]} ({path})")
    meta = labels_store.read_meta(path)
    if meta is not None:
        if args.ignore_label is not None and args.ignore_label != labels_store.CONVENTION.unlabelled:
            raise ValueError(f"{path} is a napari-qlty labels store (0 = unlabelled): drop --ignore-label")
        convention = labels_store.CONVENTION
    else:
        convention = LabelConvention(-1 if args.ignore_label is None else args.ignore_label, 0)
    try:
        volume = as_label_volume(src, grid)
    except ValueError as e:  # their shape: nothing --ignore-label could change
        raise ValueError(f"{e} (labels: {path})") from None
    try:
        return LabelView(volume, convention)
    except ValueError as e:
        raise ValueError(f"{e} (--ignore-label; labels: {path})") from None


def make_grid(args, src) -> Grid:
    if args.window is None or args.step is None:
        raise ValueError("--window and --step are required (a bioimage.io package given with --model gives them)")
    return Grid(src.shape[2:], args.window, args.step, 0 if args.border is None else args.border, pad=args.pad,
                axes=src.axes[2:], pad_advice="pass --pad reflect or --pad constant")


def package_model(args, src):
    """A bioimage.io package given with --model: its spec, and the grid it takes (the
    window from its valid sizes, the border from its halo, unless given)."""
    from .models.bioimageio import PackageSpec, code_to_accept, package_grid, read_package

    package = read_package(args.model)
    needs = code_to_accept(package, args.weights)
    if needs is not None and not args.accept_package_code:
        raise ValueError(f"the package builds its network by running the Python file {needs[0]} it holds "
                         f"({needs[1]}): read it, then pass --accept-package-code to run it")
    spec = PackageSpec(args.model, weights=args.weights, accept_code=args.accept_package_code)
    grid = package_grid(package, src.shape[2:], window=args.window, step=args.step, border=args.border,
                        axes=src.axes[2:])
    return spec, grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-qlty",
        description="Tiled deep learning on images larger than memory, without a screen: plan the windows, "
                    "export training pairs, predict, export a model for bioimage.io.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="show the window grid (and the labels it keeps) without running a model")
    p.add_argument("input", help="image: zarr, OME-Zarr, TIFF, MRC, .npy or a zarr URL")
    add_grid_options(p)
    p.add_argument("--labels", help="sparse labels: also count the windows an export keeps (Table 2)")
    add_labels_options(p)

    p = sub.add_parser("export", help="write cleaned training pairs (image + sparse labels) to zarr")
    p.add_argument("input", help="image")
    p.add_argument("labels", help="sparse labels: a napari-qlty labels store, or any array with --ignore-label")
    p.add_argument("output", help="output .zarr")
    add_grid_options(p)
    add_labels_options(p)
    add_normalisation_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an export of ours at OUTPUT")

    p = sub.add_parser("predict", help="run a model over a volume into a zarr store (resumable)")
    p.add_argument("input", help="image")
    p.add_argument("output", help="output .zarr (probabilities and/or labels)")
    p.add_argument("--model", required=True,
                   help="a napari-qlty checkpoint, a TorchScript file, a torch.export .pt2, "
                        "state_dict.pt::package.module:factory (the factory is code you choose to run), or a "
                        "bioimage.io package (rdf.yaml, its folder or its .zip)")
    p.add_argument("--accept-package-code", action="store_true",
                   help="a bioimage.io package with state-dict weights: run the Python file it holds to build "
                        "the network (read it first: it is code)")
    p.add_argument("--weights", choices=["torchscript", "pytorch_state_dict"], default=None,
                   help="which weights of a bioimage.io package (default: TorchScript when it has them)")
    add_grid_options(p, required=False)
    p.add_argument("--border-weight", type=float, default=None,
                   help="weight of each window's border band (default 1; 0 for a bioimage.io package: its "
                        "halo is cropped)")
    p.add_argument("--weighting", choices=[m for m in MODES if m != "map"], default="border")
    p.add_argument("--batch-size", default="4", help="windows per batch, or auto (within --memory-budget)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--memory-budget", default=None, help="e.g. 2GiB (default: half the free memory, <= 4GiB)")
    p.add_argument("--postprocess", choices=["softmax", "sigmoid"], default=None)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="labels of a one-channel model: value >= threshold, after a sigmoid (default 0.5)")
    add_normalisation_options(p)
    p.add_argument("--outputs", choices=["both", "probabilities", "labels"], default="both")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write where the model is unsure: the windows' disagreement, an ensemble's "
                        "members', the entropy (an 'uncertainty' image in OUTPUT)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--chunks", type=int_or_tuple, default=None,
                   help="output chunk edge per axis (default 128 in 3D, 1024 in 2D)")
    p.add_argument("--workers", type=int, default=1, help="regions run at once on local threads")
    p.add_argument("--scheduler", default=None, help="a dask scheduler address (tcp://host:8786)")
    p.add_argument("--overwrite", action="store_true", help="replace a prediction of ours at OUTPUT")
    g = p.add_argument_group("speed (off by default: results may move a little; docs/benchmarks.md has figures)")
    g.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                   help="run the model under autocast to bfloat16 or float16")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory for 2D/3D windows")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (a one-off compile first)")
    g = p.add_argument_group("OME-Zarr output (a pyramid written as the run goes)")
    g.add_argument("--levels", type=int, default=None,
                   help="resolution levels (default: until the coarsest fits a screen; 1: no pyramid)")
    g.add_argument("--downscale", type=int_or_tuple, default=None,
                   help="factor per level along each tiled axis (default 2 along space, 1 along time)")
    g.add_argument("--scale", type=floats, default=None,
                   help="physical voxel size per tiled axis (default: the input's, else 1)")
    g.add_argument("--translation", type=floats, default=None,
                   help="physical position of the first voxel per tiled axis (default: the input's, else 0)")
    g.add_argument("--units", default=None,
                   help="unit of the tiled axes, one or one per axis: nanometer, micrometer, angstrom, ...")
    g.add_argument("--classes", default=None,
                   help="names of the label values, 'background,filament', or a napari-qlty labels store "
                        "whose class names to use (default: the model's, if it carries them)")

    p = sub.add_parser("export-model", help="write a napari-qlty model as a bioimage.io package (.zip or folder)")
    p.add_argument("model", help="a napari-qlty checkpoint (Save model in the Train widget, or an ensemble)")
    p.add_argument("output", help="the package: a .zip, or a folder")
    p.add_argument("--image", required=True, help="an image the model was made for: the test input is cut from it")
    p.add_argument("--axes", default=None, help="the image's axes, e.g. zyx (default: from metadata)")
    p.add_argument("--name", default=None, help="the model's name (default: the checkpoint's)")
    p.add_argument("--description", default=None)
    p.add_argument("--author", action="append", default=[], help="an author's name (repeat for several)")
    p.add_argument("--license", default="CC-BY-4.0", help="an SPDX licence id (default CC-BY-4.0)")
    p.add_argument("--window", type=int_or_tuple, default=None, help="default: the window it was trained on")
    p.add_argument("--halo", type=int_or_tuple, default=None, help="default: the network's reach, measured")
    p.add_argument("--overwrite", action="store_true", help="replace a package napari-qlty exported at OUTPUT")
    return parser


def class_names_of(text: str | None) -> list[str] | None:
    """``--classes``: names, or the class names of a labels store (its classes 1.. are
    the model's outputs 0..)."""
    if text is None:
        return None
    meta = labels_store.read_meta(text)
    if meta is not None:
        return [name for _, name in sorted(labels_store.stored_classes(meta).items())]
    return labels_store.parse_class_names(text)


def cmd_plan(args) -> int:
    from .core.pairs import select_windows

    src = open_input(args.input, args)
    grid = make_grid(args, src)
    print(f"input      {in_flags(src.describe())}")
    print(f"grid       window {grid.window}, step {grid.step}, border {grid.border}")
    print(f"windows    {' x '.join(map(str, grid.counts))} = {len(grid)} per image, "
          f"{len(grid) * src.shape[0]} in all")
    print(f"duplication {grid.duplication:.2f} (voxels in windows / voxels)")
    if args.labels:
        labels = open_labels(args.labels, args, grid)
        print(f"labels     {labels.convention.describe()}")
        _, stats = select_windows(labels, grid, min_labelled=args.min_labelled)
        print(stats.table())
    return 0


def cmd_export(args) -> int:
    from .io.pairs_store import export_pairs

    image = open_input(args.input, args)
    grid = make_grid(args, image)
    labels = open_labels(args.labels, args, grid)
    bar = None
    stats = None
    for written, total, stats in export_pairs(image, labels, grid, args.output, min_labelled=args.min_labelled,
                                              overwrite=args.overwrite, normalise=normalisation_of(args)):
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

    from .models.bioimageio import is_package

    src = open_input(args.input, args)
    if is_package(args.model):
        model, grid = package_model(args, src)
    elif args.accept_package_code or args.weights:
        raise ValueError("--accept-package-code and --weights are for a bioimage.io package given with --model")
    else:
        model, grid = ModelSpec.parse(args.model), make_grid(args, src)
    border_weight = args.border_weight if args.border_weight is not None else (
        0.0 if is_package(args.model) else 1.0)
    weighting = Weighting(args.weighting, border_weight=border_weight)
    batch_size = args.batch_size
    if batch_size != "auto":
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"--batch-size must be an int >= 1 or auto, got {batch_size!r}") from None
    bar = None
    for event in iter_predict(
        model, src, grid, args.output,
        weighting=weighting, batch_size=batch_size, device=args.device,
        memory_budget=args.memory_budget, probabilities=args.outputs in ("both", "probabilities"),
        labels=args.outputs in ("both", "labels"), dtype=args.dtype, postprocess=args.postprocess,
        threshold=args.threshold, normalise=normalisation_of(args), workers=args.workers,
        scheduler=args.scheduler, overwrite=args.overwrite,
        chunks=None if args.chunks is None else per_axis(args.chunks, grid.ndim, "--chunks"),
        speed=Speed(args.precision, args.channels_last, args.compile),
        levels=args.levels, downscale=args.downscale, scale=args.scale, translation=args.translation,
        units=None if args.units is None else (args.units.split(",") if "," in args.units else args.units),
        classes=class_names_of(args.classes), uncertainty=args.uncertainty,
    ):
        if event.kind == "start":
            print(f"input  {in_flags(src.describe())}")
            print(f"grid   {' x '.join(map(str, grid.counts))} windows per image; {event.message}")
            bar = tqdm(total=event.windows_total, initial=event.windows_done, unit="window", desc="predict")
        elif event.kind == "region" and bar is not None:
            bar.update(event.windows_done - bar.n)
        elif event.kind == "done":
            if bar is not None:
                bar.close()
            print(event.message)
    return 0


def cmd_export_model(args) -> int:
    from .models.bioimageio import export_package

    path = export_package(args.model, args.output, args.image, name=args.name, description=args.description,
                          authors=args.author, license=args.license, window=args.window, halo=args.halo,
                          axes=args.axes, overwrite=args.overwrite)
    print(f"wrote {path} (bioimage.io model package, validated with bioimageio.spec)")
    return 0


def in_flags(message: str) -> str:
    """An engine message in this interface's words: parameters as flags."""
    for name, flag in sorted(FLAGS.items(), key=lambda kv: -len(kv[0])):
        word = rf"(?<![\w-]){name}"  # a whole word: scale, not downscale
        message = re.sub(word + r"(\[| along| must| has )", lambda m: flag + m.group(1), message)
        message = re.sub(word + r"=(?=[\s,);]|$)", flag, message)  # "pass axes= to set": the flag alone
        message = re.sub(word + "=", flag + " ", message)
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"plan": cmd_plan, "export": cmd_export, "predict": cmd_predict,
               "export-model": cmd_export_model}[args.command]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DenseLabelsWarning)
            code = command(args)
        for w in caught:
            if issubclass(w.category, DenseLabelsWarning):
                print(f"napari-qlty {args.command}: warning: {w.message}; if another value marks "
                      "unlabelled voxels, give it with --ignore-label", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return code
    except StoreError as err:
        hint = " (pass --overwrite to replace it)" if err.remedy == "overwrite" else ""
        print(f"napari-qlty {args.command}: error: {err}{hint}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, ImportError, IndexError) as err:
        print(f"napari-qlty {args.command}: error: {in_flags(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-qlty {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
