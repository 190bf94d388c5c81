"""A bioimage.io package in napari-qlty's engine: its network wrapped to take and give
(batch, channels, *window), its processing carried along, its grid from its declared
sizes and halo.

What runs: TorchScript weights are a program that torch runs (load them only from people
you trust). State-dict weights are only numbers, but the network around them is built
by the Python file the package holds; that file is executed only after the user accepts
the package (``accept_code``), from the package itself (never from ``sys.path``), after
its sha256 is checked against the description. Nothing is unpickled: state dicts are
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import linecache
import math
import sys
import types
import zipfile
from collections.abc import Sequence

import torch
from torch import nn

from ...core.grid import Grid, per_axis
from ...core.inference import NORMALISATION_ATTRIBUTE, POSTPROCESSING_ATTRIBUTE
from ..loading import _strip_prefix, _unwrap_state_dict
from ..spec import ModelLoadError, ModelSpec, archive_entries
from .package import Package, PackageSpec, WeightsEntry
from .reading import read_package

#: the window edge napari-qlty aims for when the package does not prefer one
DEFAULT_EDGE = {1: 4096, 2: 256, 3: 64}
#: window along the axes a model does not tile (a 2D model on a z stack: slices per window)
SLICES_PER_WINDOW = 8
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
                "int32": torch.int32, "int64": torch.int64, "uint16": torch.uint16, "uint32": torch.uint32,
                "uint64": torch.uint64, "bool": torch.bool}


# -- which weights, and what they ask the user to trust ------------------------------------------
def choose_weights(package: Package, weights: str | None = None) -> WeightsEntry:
    """The weights to run: those asked for, else TorchScript when there is some, else the
    state dict."""
    if weights is not None:
        entry = package.weights_entry(weights)
        if entry is None:
            have = ", ".join(w.format for w in package.weights)
            raise ModelLoadError(f"the package {package.name!r} has no {weights} weights (it has {have})")
        return entry
    return package.weights_entry("torchscript") or package.weights[0]


def code_to_accept(package: Package, weights: str | None = None) -> tuple[str, str, str] | None:
    """``(file, callable, sha256)`` of the Python code the chosen weights need to run, or
    None (TorchScript)."""
    entry = choose_weights(package, weights)
    if entry.format != "pytorch_state_dict" or entry.architecture is None:
        return None
    data = package.files.checked(entry.architecture, entry.architecture_sha256)
    return entry.architecture, str(entry.callable), hashlib.sha256(data).hexdigest()


def load_network(package: Package, device: torch.device, weights: str | None = None,
                 accept_code: bool | str = False) -> nn.Module:
    """The package's network on ``device``, in eval mode (see the module's docstring for
    what runs)."""
    entry = choose_weights(package, weights)
    files = package.files
    if entry.format == "torchscript":
        data = files.checked(entry.source, entry.sha256)
        if not _is_torchscript(data):
            raise ModelLoadError(f"{entry.source} in {package.location} is not a TorchScript archive")
        try:
            net = torch.jit.load(io.BytesIO(data), map_location=device)
        except Exception as e:
            raise ModelLoadError(f"{entry.source}: torch.jit.load failed: {type(e).__name__}: {e}") from e
        return net.eval()
    if entry.library is not None:
        raise ModelLoadError(
            f"the package {package.name!r} builds its network with {entry.library}.{entry.callable}, code "
            "from an installed library that the package names; napari-qlty builds state dicts only "
            "with the architecture file inside the package"
            + (" (it has TorchScript weights: use those)" if package.weights_entry("torchscript") else "")
        )
    file, name, sha = code_to_accept(package, entry.format)
    if accept_code is not True and accept_code != sha:
        if accept_code:
            raise ModelLoadError(f"{file} in the package {package.location} changed since you accepted it; "
                                 "accept it again after reading it")
        raise ModelLoadError(
            f"the package {package.name!r} builds its network by running the Python file {file} it holds "
            f"({name}); napari-qlty runs it only if you accept the package (accept_code=True)"
        )
    build = architecture(files.read(file), file, name, package.location)
    kwargs = dict(entry.kwargs)
    try:
        net = build(**kwargs)
    except Exception as e:
        raise ModelLoadError(f"{file}: {name}(**{kwargs}) failed: {type(e).__name__}: {e}") from e
    if not isinstance(net, nn.Module):
        raise ModelLoadError(f"{file}: {name} returned a {type(net).__name__}, not a torch.nn.Module")
    try:
        obj = torch.load(io.BytesIO(files.checked(entry.source, entry.sha256)), map_location=device,
                         weights_only=True)
    except Exception as e:
        raise ModelLoadError(
            f"{entry.source} in {package.location} is not a state dict torch reads as data "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    state = _unwrap_state_dict(obj, entry.source)
    net.to(device)
    try:
        net.load_state_dict(_strip_prefix(state, net), strict=entry.strict)
    except RuntimeError as e:
        raise ModelLoadError(f"the weights {entry.source} do not fit the network {file} builds: {e}") from None
    return net.eval()


def _is_torchscript(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            entries = archive_entries(zf)
    except zipfile.BadZipFile:
        return False
    return "constants.pkl" in entries and any(e.startswith("code/") for e in entries)


def architecture(source: bytes, file: str, name: str, where: str):
    """``name`` from the package's Python ``file``, executed as a module of its own (never
    imported from ``sys.path``; other files of the package are not importable from it)."""
    digest = hashlib.sha256(source).hexdigest()
    module_name = f"napari_qlty_package_{digest[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        module = types.ModuleType(module_name)
        module.__file__ = f"<{where}>/{file}"
        text = source.decode("utf-8")
        linecache.cache[module.__file__] = (len(text), None, text.splitlines(True), module.__file__)
        sys.modules[module_name] = module  # dataclasses and typing look classes' modules up
        try:
            exec(compile(text, module.__file__, "exec"), module.__dict__)  # noqa: S102 - accepted by the user
        except ImportError as e:
            del sys.modules[module_name]
            raise ModelLoadError(
                f"{file} imports {e.name or e}, which is not installed here (or is another file of the "
                "package, which napari-qlty does not import)"
            ) from None
        except Exception as e:
            del sys.modules[module_name]
            raise ModelLoadError(f"running {file} failed: {type(e).__name__}: {e}") from e
    build = getattr(module, name, None)
    if not callable(build):
        raise ModelLoadError(f"{file} defines no callable {name!r}")
    return build


# -- the network in napari-qlty's convention ------------------------------------------------------
class PackageModel(nn.Module):
    """The package's network as napari-qlty calls models: (B, C, *window) in, (B, K, *window)
    out, windows in napari-qlty's axis order (z, y, x).

    Axes are moved to the order the package declares, channels and batch dropped or looped
    where it has none, the window cast to the type the network takes. Windows with more
    axes than the network tiles (a 2D model on a z stack) run slice by slice. The package's
    preprocessing and postprocessing ride along as attributes that the engine applies with
    statistics of the whole volume (:func:`~napari_qlty.infer`, :func:`~napari_qlty.predict`).
    """

    def __init__(self, net: nn.Module, package: Package) -> None:
        super().__init__()
        self.net = net
        self.package_name = package.name
        self.space = package.input.space
        self.sizes = dict(package.input.sizes)
        self.in_axes, self.out_axes = package.input.axes, package.output.axes
        self.in_channels, self.out_channels = package.input.channels, package.output.channels
        self.batch = package.input.batch
        self.model_dtype = TORCH_DTYPES.get(package.input.model_dtype, torch.float32)
        setattr(self, NORMALISATION_ATTRIBUTE, package.input.processing)
        setattr(self, POSTPROCESSING_ATTRIBUTE, package.output.processing)
        self.napari_qlty_info = {
            "name": package.name, "axes": "".join(self.space), "classes": list(package.classes),
            "halo": [package.output.halo_of(a) for a in self.space],
            "window": [dict(package.preferred_window).get(a) for a in self.space]
            if package.preferred_window else None,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.space)
        if x.ndim < 2 + k:
            raise ValueError(f"the model takes {k}D windows ({', '.join(self.space)}); the windows are "
                             f"{x.ndim - 2}D")
        b, c = x.shape[:2]
        check_channels(self.in_channels, c)
        check_window(self.sizes, self.space, tuple(x.shape[-k:]))
        lead = tuple(x.shape[2:-k])
        if lead:  # every slice along the axes the model does not tile, on its own
            x = x.movedim(1, 1 + len(lead)).reshape(-1, c, *x.shape[-k:])
        y = self._declared(x)
        if lead:
            y = y.reshape(b, *lead, y.shape[1], *y.shape[-k:]).movedim(1 + len(lead), 1)
        return y

    def _declared(self, x: torch.Tensor) -> torch.Tensor:
        names = ["batch", "channel", *self.space]
        if self.in_channels is None:
            x, names = x[:, 0], [n for n in names if n != "channel"]
        full = list(self.in_axes) if "batch" in self.in_axes else ["batch", *self.in_axes]
        x = x.permute([names.index(a) for a in full])
        if x.dtype != self.model_dtype:
            x = x.to(self.model_dtype)
        at = full.index("batch")
        if self.batch == "any":
            y = _one(self.net(x))
            out_full = list(self.out_axes)
        else:  # one window at a time (the package takes no batch, or a batch of one)
            items = x.split(1, dim=at)
            if self.batch == "none":
                ys = [_one(self.net(item.squeeze(at))).unsqueeze(0) for item in items]
                out_full = ["batch", *self.out_axes]
            else:
                ys = [_one(self.net(item)) for item in items]
                out_full = list(self.out_axes)
            y = torch.cat(ys, dim=out_full.index("batch"))
        wanted = [a for a in ("batch", "channel", *self.space) if a in out_full]
        y = y.permute([out_full.index(a) for a in wanted])
        if "channel" not in out_full:
            y = y.unsqueeze(1)
        return y if y.is_floating_point() else y.float()


def _one(out):
    if isinstance(out, (tuple, list)):
        if len(out) != 1:
            raise ValueError(f"the network returned {len(out)} tensors; its package describes one output")
        out = out[0]
    return out


def check_channels(expected: int | None, given: int) -> None:
    if expected is None and given != 1:
        raise ValueError(f"the model expects 1 channel (it has no channel axis), the image has {given}")
    if expected is not None and given != expected:
        raise ValueError(f"the model expects {expected} channels, the image has {given}")


def valid_sizes(minimum: int, step: int, count: int = 4) -> str:
    """``"16 + k*8 (16, 24, 32, 40, ...)"``, or ``"only 64"`` for a fixed size."""
    if step == 0:
        return f"only {minimum}"
    return f"{minimum} + k*{step} ({', '.join(str(minimum + i * step) for i in range(count))}, ...)"


def is_valid(size: int, minimum: int, step: int) -> bool:
    return size == minimum if step == 0 else size >= minimum and (size - minimum) % step == 0


def check_window(sizes: dict, space: Sequence[str], window: Sequence[int], name: str = "window") -> None:
    """ValueError naming the sizes the model takes when ``window`` (along ``space``) is not one."""
    for axis, w in zip(space, window):
        minimum, step = sizes[axis]
        if not is_valid(int(w), minimum, step):
            raise ValueError(f"{name} along {axis} must be a size the model takes: {valid_sizes(minimum, step)}; "
                             f"got {int(w)}")


# -- the grid ------------------------------------------------------------------------------------
def package_grid(package: Package, shape: Sequence[int], *, window=None, step=None, border=None,
                 axes: str | None = None, pad_advice: str | None = None) -> Grid:
    """The grid to run ``package`` over a volume of spatial ``shape``.

    Along the axes the model tiles: the window is a size it takes (``min + k*step``), by
    default the largest up to the package's preferred window (else 64 in 3D, 256 in 2D)
    and the volume; the border is the declared halo (what the model's own tools crop), and
    the step the window less both borders, rounded down to the size step, so the windows'
    cores meet and every window sits on the network's pooling grid. An axis smaller than
    the smallest window is padded (reflected) and cropped back. Along leading axes the
    model does not tile (a 2D model on a z stack), windows of a few slices without overlap.
    Given ``window``, ``step`` or ``border`` (one int, or one per axis) are used instead;
    a window the model cannot take is a ValueError naming the valid sizes.
    """
    shape = tuple(int(s) for s in shape)
    d, space = len(shape), package.input.space
    k = len(space)
    if d < k:
        raise ValueError(f"the model tiles {k} axes ({', '.join(space)}); the image has {d}")
    names = axes if axes is not None and len(axes) == d else None
    label = (names[:d - k] if names else "?" * (d - k)) + "".join(space)
    halo = tuple([0] * (d - k) + [package.output.halo_of(a) for a in space])
    sizes = dict(package.input.sizes)
    preferred = dict(package.preferred_window)
    if window is None:
        window = tuple(min(s, SLICES_PER_WINDOW) for s in shape[:d - k]) + tuple(
            default_window(sizes[a], preferred.get(a, DEFAULT_EDGE.get(k, 64)), s, h)
            for a, s, h in zip(space, shape[d - k:], halo[d - k:]))
    else:
        window = per_axis(window, d, "window")
        check_window(sizes, label[d - k:], window[d - k:])
    border = halo if border is None else per_axis(border, d, "border")
    if step is None:
        rule = [1] * (d - k) + [max(1, sizes[a][1]) for a in space]
        step = tuple(w if i < d - k else max(r, (w - 2 * b) // r * r)
                     for i, (w, b, r) in enumerate(zip(window, border, rule)))
    pad = "reflect" if any(w > s for w, s in zip(window, shape)) else None
    return Grid(shape, window, step, border, pad=pad, axes=names or label, pad_advice=pad_advice)


def default_window(size_rule: tuple[int, int], preferred: int, size: int, halo: int) -> int:
    """The largest size the model takes up to ``preferred`` and the volume's ``size``, and
    more than twice the halo (never below the smallest the model takes)."""
    minimum, step = size_rule
    if step == 0:
        return minimum
    smallest = minimum + step * max(0, math.ceil((2 * halo + 1 - minimum) / step))
    target = min(preferred, size)
    if target <= smallest:
        return smallest
    return smallest + step * ((target - smallest) // step)


# -- loading through load_model ------------------------------------------------------------------
def load_package_model(spec: ModelSpec, device: torch.device) -> PackageModel:
    """The model :func:`~napari_qlty.models.load_model` gives for a package."""
    package = read_package(spec.path)
    weights = spec.weights if isinstance(spec, PackageSpec) else None
    accept = spec.accept_code if isinstance(spec, PackageSpec) else False
    net = load_network(package, device, weights, accept)
    return PackageModel(net, package).to(device).eval()
