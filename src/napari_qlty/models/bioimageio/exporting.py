"""A model trained here as a bioimage.io package (format 0.5), for the Model Zoo's tools,
deepImageJ, ilastik, and napari-qlty itself.

The package holds TorchScript weights (traced) and, for napari-qlty's own networks, the
state dict with the architecture's source file; the normalisation the model was trained
with as preprocessing (``scale_range`` or ``zero_mean_unit_variance`` with our epsilon, so
every value maps to the same bits), a softmax as postprocessing when the network returns
logits; the axes, the window sizes the network takes (``min + k*step``), the halo it needs
(its reach, measured), the class names, a cover image, and test tensors made by
napari-qlty's own tiled inference on a crop of the given image. Before the package is
moved into place it is validated with ``bioimageio.spec`` and loaded back through
:mod:`.reading` and :mod:`.running`, and must reproduce its own test output.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.grid import Grid
from ...core.inference import NORMALISATION_ATTRIBUTE, for_inference, infer
from ...core.intensity import Fitted, Normalisation
from ...core.processing import Processing, Step, normalisation_as_steps
from ...core.weights import Weighting
from ...io import formats
from ...io.sources import open_source
from ..checkpoints import checkpoint_recipe
from ..loading import load_model
from ..spec import ModelLoadError, ModelSpec
from .architecture import FILE_NAME, architecture_source, size_step
from .package import PackageSpec
from .reading import read_package
from .running import package_grid

FORMAT_VERSION = "0.5.4"

try:
    __version__ = version("napari-qlty")
except PackageNotFoundError:  # running from a source tree
    __version__ = "unknown"
SPACE = "zyx"
WEIGHTS = "weights.pt"
TORCHSCRIPT = "weights.torchscript"


@dataclass(frozen=True)
class Recipe:
    """What napari-qlty knows of a model: how to rebuild it and what it expects."""

    factory: str | None
    factory_kwargs: dict
    window: tuple[int, ...] | None
    axes: str | None
    classes: tuple[str, ...]
    normalisation: Normalisation
    name: str | None


def recipe_of(model, recipe: dict | None) -> Recipe:
    """A checkpoint's recipe, or the one given, or what a loaded model carries."""
    info = dict(getattr(model, "napari_qlty_info", None) or {})
    data = {**info, **(recipe or {})}
    norm = data.get("normalisation")
    if norm is None:
        carried = getattr(model, NORMALISATION_ATTRIBUTE, None)
        norm = carried.normalisation if isinstance(carried, Fitted) else carried
    if isinstance(norm, dict):
        norm = Normalisation.from_json(norm)
    if norm is not None and not isinstance(norm, Normalisation):
        raise ValueError(f"the model's normalisation must be a napari-qlty Normalisation, got {type(norm).__name__}")
    window = data.get("window")
    return Recipe(data.get("factory"), dict(data.get("factory_kwargs") or {}),
                  None if window is None else tuple(int(w) for w in window), data.get("axes"),
                  tuple(str(c) for c in data.get("classes") or ()), norm or Normalisation(), data.get("name"))


#: the characters a bioimage.io name may hold
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def zoo_name(title: str) -> str:
    """``title`` as the Model Zoo allows a name: other characters (``tomogram · round 1``'s
    dot) become dashes, runs of them one, and a name shorter than 5 gets a suffix."""
    name = "".join(c if c in NAME_CHARACTERS else "-" for c in title)
    name = re.sub(r"-( ?-)+", "-", name).strip(" -") or "model"
    return name if len(name) >= 5 else f"{name} (napari-qlty)"


def export_package(
    model: nn.Module | str | os.PathLike,
    output: str | os.PathLike,
    image,
    *,
    recipe: dict | None = None,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
    window: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    axes: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a bioimage.io package at ``output`` (a ``.zip``, else a folder).

    ``model``: a napari-qlty checkpoint (Save model in the Train widget,
    :func:`~napari_qlty.train.save_checkpoint`, :func:`~napari_qlty.train.save_ensemble`),
    or a module (then ``recipe`` gives its ``factory``, ``factory_kwargs``, ``window``,
    ``axes``, ``classes`` and ``normalisation``, as a checkpoint records them; without a
    factory the package gets TorchScript weights only). ``image``: anything
    :func:`~napari_qlty.io.sources.open_source` opens (a path, an array, a napari layer's
    data); the test input is cut from its centre, and its axes come from ``axes`` or its
    metadata. ``window`` and ``halo`` override the trained window and the measured reach.
    An existing ``output`` is replaced only if it is a package napari-qlty exported, and
    only with ``overwrite``. Returns the path written.
    """
    output = Path(output).expanduser().absolute()
    formats.check_replaceable(output, formats.PACKAGE, overwrite=overwrite)  # replaced once complete
    if isinstance(model, (str, os.PathLike)):
        found = checkpoint_recipe(model)
        if found is None:
            raise ValueError(f"{model} is not a napari-qlty checkpoint (Save model in the Train widget writes one)")
        recipe, model = {**found, **(recipe or {})}, load_model(ModelSpec(os.fspath(model)), "cpu")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a checkpoint path, got {type(model).__name__}")
    about = recipe_of(model, recipe)
    net = for_inference(model, torch.device("cpu"))
    source = open_source(image, axes=axes)
    ndim = source.ndim - 2
    space = (about.axes or "")[-ndim:] if about.axes and len(about.axes) >= ndim else SPACE[-ndim:]
    if ndim not in (2, 3) or len(space) != ndim:
        raise ValueError(f"a package takes 2D or 3D images; the image has {ndim} spatial axes")
    channels = source.shape[1]
    trained = _per_axis(window, ndim) or _per_axis(about.window, ndim) or tuple(
        min(s, 64 if ndim == 3 else 256) for s in source.shape[2:])
    step = size_step(about.factory, about.factory_kwargs)
    halo_ = _per_axis(halo, ndim) or measured_reach(net, channels, trained, step)
    minimum = tuple(step * math.ceil((2 * h + 1) / step) for h in halo_)
    # the trained window, as a size the network takes, and large enough to keep a core
    preferred = tuple(max(m, w - (w - m) % step) for m, w in zip(minimum, trained))

    test_in = _test_input(source, preferred, halo_, minimum, step)
    pre = Processing((Step("ensure_dtype", {"dtype": "float32"}), *normalisation_as_steps(about.normalisation),
                      Step("ensure_dtype", {"dtype": "float32"})))
    classes_out = _output_channels(net, channels, preferred)
    post = _postprocessing(net, about, classes_out)
    test_out, test_grid = _tiled(net, test_in, preferred, halo_, step, pre, post)
    _check_reach(net, test_in, test_out, pre, post, halo_)
    classes = about.classes if len(about.classes) == classes_out else tuple(f"class {k}" for k in range(classes_out))

    files: dict[str, bytes] = {}
    files[TORCHSCRIPT] = _torchscript(net, test_in, pre, test_grid.window)
    arch = None
    if about.factory is not None:
        try:
            arch = architecture_source(about.factory, about.factory_kwargs)
        except ModelLoadError as e:
            warnings.warn(f"{e}; the package gets TorchScript weights only", stacklevel=2)
    if arch is not None:
        files[FILE_NAME] = arch[0].encode("utf-8")
        files[WEIGHTS] = _state_dict_bytes(net)
    files["test_input.npy"] = _npy(test_in.numpy())
    files["test_output.npy"] = _npy(test_out.numpy())
    files["cover.png"] = cover(test_in.numpy(), test_out.numpy())
    title = name or about.name or "napari-qlty model"
    files["README.md"] = _readme(title, description, about, space, preferred, halo_, minimum, step, classes,
                                 test_grid).encode("utf-8")
    rdf = _description(title, description, authors, license, space, channels, classes, minimum, step, halo_,
                       pre, post, arch, files, about, preferred, test_grid)
    files["rdf.yaml"] = _yaml(rdf)
    return _write(files, output, test_in, test_out, arch is not None)


# -- measuring the model ------------------------------------------------------------------------
def _per_axis(value, ndim: int) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (int(value),) * ndim
    values = tuple(int(v) for v in value)
    return values[-ndim:] if len(values) >= ndim else None


def measured_reach(model, channels: int, window: Sequence[int], step: int = 1) -> tuple[int, ...]:
    """How far, per axis, an output voxel's value depends on the input: the support of the
    gradient of a central block of outputs (one pooling cell: every phase).

    Measured on a copy whose weights are positive averages (each filter sums to 1, biases
    small and positive) with a positive random input, so that no ReLU is off and nothing
    saturates: every path the architecture has carries gradient, and positive paths
    cannot cancel (a thin network with random weights has dead paths, and would seem to
    see less far than it does). The output channels are weighed by distinct numbers
    (their plain sum can be constant: a softmax's). Along an axis where the reach touches
    the window's faces it is measured again in a window twice as long, up to 512 voxels
    (2D) or 128 (3D).
    """
    import copy

    window = tuple(int(w) for w in window)
    largest = 512 if len(window) < 3 else 128
    try:
        probe = copy.deepcopy(model)
        with torch.no_grad():
            for p in probe.parameters():
                if p.ndim >= 2:
                    p.copy_(p.abs() + 1e-3)
                    p.div_(p.sum(dim=tuple(range(1, p.ndim)), keepdim=True))
                else:
                    p.fill_(1e-3)
    except Exception:  # noqa: BLE001 - a module that cannot be copied is probed as it is
        probe = model
    while True:
        reach, touches = _support(probe, channels, window, step)
        grown = tuple(min(largest, 2 * w) // step * step if t else w for w, t in zip(window, touches))
        if grown == window:
            return reach
        window = grown


def _support(probe, channels: int, window: tuple[int, ...], step: int):
    """(reach per axis, whether it touches the window's faces per axis)."""
    lo = tuple(max(0, (w // 2) // step * step) for w in window)
    hi = tuple(min(w, a + step) for a, w in zip(lo, window))
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand((1, channels, *window), generator=generator) + 0.5).requires_grad_(True)
    with torch.enable_grad():
        y = probe(x)[(slice(None), slice(None), *(slice(a, b) for a, b in zip(lo, hi)))]
        weights = torch.arange(1, y.shape[1] + 1, dtype=y.dtype).view(1, -1, *([1] * (y.ndim - 2)))
        (y * weights).sum().backward()
    seen = x.grad.abs().sum((0, 1)) > 0
    reach, touches = [], []
    for axis in range(len(window)):
        other = tuple(a for a in range(len(window)) if a != axis)
        used = np.nonzero(seen.any(dim=other).numpy() if other else seen.numpy())[0]
        reach.append(int(max(lo[axis] - used.min(), used.max() - (hi[axis] - 1), 0)) if used.size else 0)
        touches.append(bool(used.size) and (used.min() == 0 or used.max() == window[axis] - 1))
    return tuple(reach), tuple(touches)


def _output_channels(net, channels: int, window) -> int:
    with torch.no_grad():
        return int(net(torch.zeros((1, channels, *window))).shape[1])


def _postprocessing(net, about: Recipe, classes: int) -> Processing:
    """Softmax (sigmoid for one channel) for logits; nothing for an ensemble's probabilities."""
    if getattr(net, "output", None) == "probabilities" or (
            about.factory and about.factory.endswith(":ensemble")
            and about.factory_kwargs.get("output", "probabilities") == "probabilities"):
        return Processing((), "output")
    return Processing((Step("softmax" if classes > 1 else "sigmoid"),), "output")


def _test_input(source, preferred, halo, minimum, step) -> torch.Tensor:
    """A crop from the centre of the first image: a window and one core more along every axis
    (origins on the pooling grid), as large as the image allows, in float32. An image
    smaller than the smallest window is reflected up to it, as napari-qlty pads it."""
    shape = source.shape[2:]
    sizes = []
    for w, h, m, s in zip(preferred, halo, minimum, shape):
        want = w + max(step, (w - 2 * h) // step * step)
        sizes.append(want if want <= s else m + (s - m) // step * step if s >= m else s)
    start = tuple((s - t) // 2 for s, t in zip(shape, sizes))
    block = np.asarray(source[(0, slice(None), *(slice(a, a + t) for a, t in zip(start, sizes)))], dtype=np.float32)
    short = [(0, 0)] + [(0, max(0, m - t)) for m, t in zip(minimum, sizes)]
    if any(b for _, b in short):
        block = np.pad(block, short, mode="reflect" if min(sizes) > 1 else "edge")
    return torch.from_numpy(np.ascontiguousarray(block)).unsqueeze(0)


def _tiled(net, test_in, preferred, halo, step, pre: Processing, post: Processing):
    shape = tuple(test_in.shape[2:])
    window = tuple(min(w, s) for w, s in zip(preferred, shape))
    stride = tuple(max(step, (w - 2 * h) // step * step) for w, h in zip(window, halo))
    grid = Grid(shape, window, stride, halo)
    out = infer(net, test_in, grid, Weighting("border", 0.0), normalise=pre)
    return post.fit(test_in).apply(out), grid


def _check_reach(net, test_in, test_out, pre, post, halo) -> None:
    """The tiled test output must equal the network run on the whole test input: else the
    halo does not cover the network's reach, and tools that crop it would show seams."""
    with torch.no_grad():
        whole = post.fit(test_in).apply(net(pre.fit(test_in).apply(test_in.clone())))
    diff = float((whole - test_out).abs().max())
    if diff > 1e-4:
        raise ValueError(
            f"the tiled test output differs from the whole test input's by {diff:.3g}: the halo {halo} does "
            "not cover the network's reach; give a larger halo (or window)"
        )


def _torchscript(net, test_in, pre: Processing, window) -> bytes:
    """The network traced on one window; checked on that window and on the whole test input
    (another size), so a trace that froze a size is never exported."""
    fitted = pre.fit(test_in)
    whole = fitted.apply(test_in.clone())
    example = whole[(slice(None), slice(None), *(slice(0, w) for w in window))].contiguous()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
        for x in (example, whole):
            if not torch.allclose(traced(x), net(x), rtol=1e-5, atol=1e-6):
                raise ValueError("the network traced as TorchScript does not reproduce the network on windows of "
                                 "another size; it cannot be exported")
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _state_dict_bytes(net) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, buffer)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


# -- the cover ------------------------------------------------------------------------------------
def cover(test_in: np.ndarray, test_out: np.ndarray, edge: int = 256) -> bytes:
    """A PNG twice as wide as high: the test input (middle slice) and the foreground class."""
    from PIL import Image

    def middle(a):  # (1, C, *spatial) -> 2D
        a = a[0, 0]
        while a.ndim > 2:
            a = a[a.shape[0] // 2]
        return a

    raw = middle(test_in).astype(np.float64)
    lo, hi = np.percentile(raw, [1, 99.8])
    grey = np.clip((raw - lo) / (hi - lo + 1e-12), 0, 1)
    fg = middle(test_out[:, min(1, test_out.shape[1] - 1):])
    heat = _magma(np.clip(fg, 0, 1))
    left = Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB").resize((edge, edge), Image.BILINEAR)
    right = Image.fromarray(heat).resize((edge, edge), Image.NEAREST)
    both = Image.new("RGB", (2 * edge, edge))
    both.paste(left, (0, 0))
    both.paste(right, (edge, 0))
    buffer = io.BytesIO()
    both.save(buffer, format="PNG")
    return buffer.getvalue()


def _magma(p: np.ndarray) -> np.ndarray:
    stops = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float64)
    t = p * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


# -- the description ------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _description(title, description, authors, license, space, channels, classes, minimum, step, halo, pre, post,
                 arch, files, about: Recipe, preferred, test_grid) -> dict:
    torch_version = torch.__version__.split("+")[0]
    in_axes = [{"type": "batch"}, {"type": "channel", "channel_names": [f"channel {c}" for c in range(channels)]
                                   if channels > 1 else ["image"]}]
    in_axes += [{"type": "space", "id": a, "size": {"min": m, "step": step}} for a, m in zip(space, minimum)]
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": list(classes)}]
    out_axes += [{"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}, "halo": h}
                 if h else {"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}}
                 for a, h in zip(space, halo)]
    weights = {"torchscript": {"source": TORCHSCRIPT, "sha256": _sha(files[TORCHSCRIPT]),
                               "pytorch_version": torch_version}}
    if arch is not None:
        weights = {
            "pytorch_state_dict": {
                "source": WEIGHTS, "sha256": _sha(files[WEIGHTS]), "pytorch_version": torch_version,
                "architecture": {"source": FILE_NAME, "sha256": _sha(files[FILE_NAME]), "callable": arch[1],
                                 "kwargs": json.loads(json.dumps(arch[2]))},
            },
            "torchscript": {**weights["torchscript"], "parent": "pytorch_state_dict"},
        }
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": zoo_name(title),
        "description": description or f"{title}: {len(space)}D segmentation into {len(classes)} classes, "
                                      "trained with napari-qlty on sparse labels",
        "license": license,
        "tags": ["napari-qlty", "segmentation", f"{len(space)}d", "pytorch", "sparse-labels"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "inputs": [{
            "id": "input", "axes": in_axes, "data": {"type": "float32"},
            "test_tensor": {"source": "test_input.npy", "sha256": _sha(files["test_input.npy"])},
            "preprocessing": [_step_yaml(s, space) for s in pre.steps],
        }],
        "outputs": [{
            "id": "probabilities", "axes": out_axes, "data": {"type": "float32"},
            "test_tensor": {"source": "test_output.npy", "sha256": _sha(files["test_output.npy"])},
            "postprocessing": [_step_yaml(s, space) for s in post.steps],
        }],
        "weights": weights,
        "config": {
            formats.ATTRS_KEY: {
                "format": formats.PACKAGE, "version": __version__,
                "window": dict(zip(space, preferred)), "step": dict(zip(space, test_grid.step)),
                "halo": dict(zip(space, halo)), "normalisation": about.normalisation.to_json(),
                "factory": about.factory, "factory_kwargs": json.loads(json.dumps(about.factory_kwargs)),
            },
        },
    }
    if authors:
        rdf["authors"] = [{"name": str(a)} for a in authors]
    return rdf


def _step_yaml(step: Step, space: str) -> dict:
    """One step as the spec writes it; statistics over each sample as a whole (all its
    channels and space axes), which is what napari-qlty measures over the whole image."""
    get = step.get
    whole = ["channel", *space]
    if step.op == "ensure_dtype":
        return {"id": "ensure_dtype", "kwargs": {"dtype": get("dtype")}}
    if step.op == "scale_range":
        return {"id": "scale_range", "kwargs": {"axes": whole, "min_percentile": get("low"),
                                                "max_percentile": get("high"), "eps": get("eps")}}
    if step.op == "zero_mean_unit_variance":
        return {"id": "zero_mean_unit_variance", "kwargs": {"axes": whole, "eps": get("eps")}}
    if step.op == "scale_linear":
        return {"id": "scale_linear", "kwargs": {"gain": get("gain"), "offset": get("offset")}}
    return {"id": step.op}  # softmax, sigmoid


def _yaml(rdf: dict) -> bytes:
    import yaml

    return yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True).encode("utf-8")


def _readme(title, description, about: Recipe, space, preferred, halo, minimum, step, classes, test_grid) -> str:
    norm = about.normalisation
    how = {"none": "none (the stored values)", "mean-std": "zero mean, unit standard deviation",
           "percentile": f"percentiles {norm.low:g}-{norm.high:g} to 0-1" if norm.mode == "percentile" else "",
           "range": f"the values {norm.low:g}-{norm.high:g} to 0-1" if norm.mode == "range" else ""}
    axes = ", ".join(space)
    return "\n".join([
        f"# {title}", "",
        description or "A network trained with napari-qlty on sparse labels.", "",
        "## Use", "",
        f"- axes: {axes}; classes: {', '.join(classes)}",
        f"- windows: {' x '.join(map(str, minimum))} + k x {step} voxels along each axis; "
        f"trained on {' x '.join(map(str, preferred))}",
        f"- halo: {' x '.join(map(str, halo))} voxels (the network's reach: crop it, or give it no weight, "
        "when tiling)",
        f"- normalisation: {how.get(norm.mode, norm.mode)}, with statistics of the whole image, never of one "
        "window",
        "", "napari-qlty runs it tiled over volumes of any size (`napari-qlty predict image.zarr out.zarr "
        "--model this.zip`).", "",
        "## Validation", "",
        f"The test output is napari-qlty's tiled inference on the test input (windows "
        f"{' x '.join(map(str, test_grid.window))}, step {' x '.join(map(str, test_grid.step))}, the halo given no "
        "weight); it equals the network run on the whole test input.", "",
        f"Exported by napari-qlty {__version__}.", "",
    ])


# -- writing --------------------------------------------------------------------------------------
def _write(files: dict[str, bytes], output: Path, test_in, test_out, has_state_dict: bool) -> Path:
    """Write to a temporary folder beside ``output``, validate and reload it there, then move
    it into place (a package that fails any check is never left looking finished)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        folder = scratch / "package"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        _reproduces(folder, test_in, test_out, has_state_dict)
        if output.suffix.lower() == ".zip":
            made = scratch / "package.zip"
            with zipfile.ZipFile(made, "w", zipfile.ZIP_DEFLATED) as zf:
                for name in files:
                    zf.write(folder / name, name)
            read_package(made)
        else:
            made = folder
        if output.exists() or output.is_symlink():
            formats.remove_ours(output, formats.PACKAGE)
        os.replace(made, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return output


def _reproduces(folder: Path, test_in, test_out, has_state_dict: bool) -> None:
    """The package, read back through bioimageio.spec and run through napari-qlty's tiling
    with each of its weights, gives its own test output."""
    package = read_package(folder)
    grid = package_grid(package, tuple(test_in.shape[2:]))  # as napari-qlty would run it by default
    for weights in ("torchscript", "pytorch_state_dict") if has_state_dict else ("torchscript",):
        model = load_model(PackageSpec(str(folder), weights=weights, accept_code=True), "cpu")
        got = infer(model, test_in, grid, Weighting("border", 0.0))
        diff = float((got - test_out).abs().max())
        if diff > 1e-4:
            raise ValueError(f"the exported package ({weights}) does not reproduce its test output (by {diff:.3g})")
