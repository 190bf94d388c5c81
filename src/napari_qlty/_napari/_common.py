"""Small helpers shared by the widgets: parsing fields, reading layer geometry, formatting.

Nothing here computes anything the engine computes: these functions only translate
between what a napari layer or a text field holds and what the engine's functions take.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.grid import parse_per_axis

#: axis letters of a layer with this many (non-RGB) dimensions, as the engine's sources name them
AXES_FOR_NDIM = {1: "x", 2: "yx", 3: "zyx", 4: "tzyx"}

#: the paper's purple for seams (Figure 2), and colours for window outlines
SEAM_COLOR = "#b31bff"
WINDOW_COLORS = (
    "#ffd21f",  # yellow
    "#21d4fd",  # cyan
    "#ff7a1f",  # orange
    "#5cff6b",  # green
    "#ff4f9a",  # pink
    "#ffffff",  # white
)
DROPPED_COLOR = (0.55, 0.55, 0.55, 0.45)

ERROR_STYLE = "color: #ff6b6b;"
OK_STYLE = ""


# -- fields ------------------------------------------------------------------------------
def parse_optional_per_axis(text: str, name: str, ndim: int) -> tuple[int, ...] | None:
    """Like :func:`parse_per_axis`, but empty means None (automatic), one value is repeated,
    and every value is at least 1."""
    if not str(text).strip():
        return None
    value = parse_per_axis(text, name, ndim)
    values = (value,) * ndim if isinstance(value, int) else value
    if min(values) < 1:
        raise ValueError(f"{name} must be at least 1 voxel along every axis, or empty (automatic), got {text!r}")
    return values


def format_per_axis(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    values = tuple(int(v) for v in value)
    if len(set(values)) == 1:
        return str(values[0])
    return ", ".join(map(str, values))


# -- layers ------------------------------------------------------------------------------
def level0(layer, level: int = 0):
    """The full-resolution data of a layer (level 0 of a multiscale layer, or ``level``)."""
    return layer.data[level] if getattr(layer, "multiscale", False) else layer.data


def level_count(layer) -> int:
    """How many resolution levels a layer has (1 unless it is multiscale)."""
    return len(layer.data) if getattr(layer, "multiscale", False) else 1


def level_factor(layer, level: int) -> tuple[float, ...]:
    """How much coarser ``level`` is than level 0 along each (non-RGB) axis: the ratio of
    the shapes, rounded to the integer factor a pyramid of block reductions has."""
    full, coarse = spatial_shape(layer), spatial_shape(layer, level)
    out = []
    for a, b in zip(full, coarse):
        f = round(a / b)
        out.append(float(f) if f >= 1 and -(-a // f) == b else a / b)
    return tuple(out)


def spatial_shape(layer, level: int = 0) -> tuple[int, ...]:
    """The layer's shape over its (non-RGB) axes, from metadata only (nothing is read)."""
    shape = tuple(int(s) for s in level0(layer, level).shape)
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    return shape


def source_axes(layer) -> str:
    """Axis letters of the layer's data for :func:`napari_qlty.io.sources.open_source`."""
    ndim = len(spatial_shape(layer))
    if ndim not in AXES_FOR_NDIM:
        raise ValueError(f"layer {layer.name!r} has {ndim} axes; napari-qlty tiles 1 to 4")
    axes = AXES_FOR_NDIM[ndim]
    return axes + "c" if getattr(layer, "rgb", False) else axes


def spatial_transform(layer) -> dict:
    """scale and translate of the layer over its spatial axes (for layers we add)."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}


class ChannelView:
    """One class of a prediction store (N, C, *spatial), or its labels (N, *spatial), read
    lazily: a read-only array-like for napari.

    ``image`` picks one image (0 for a single image), or None keeps the image axis first
    (a time-lapse run time point by time point). Every slice napari asks for is read
    from the store at that moment, so ``layer.refresh()`` shows newly finished regions.
    """

    def __init__(self, array, channel: int | None = None, image: int | None = 0) -> None:
        self.array = array
        self.channel = channel
        self.image = image
        shape = tuple(int(s) for s in array.shape)
        if channel is not None:
            shape = shape[:1] + shape[2:]
        self.shape = shape[1:] if image is not None else shape
        self.dtype = np.dtype(str(array.dtype))
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - (len(key) - 1))
            key = key[:i] + fill + key[i + 1 :]
        key = tuple(int(k) if isinstance(k, (np.integer,)) else k for k in key)
        key = key + (slice(None),) * (self.ndim - len(key))
        n, rest = (self.image, key) if self.image is not None else (key[0], key[1:])
        full = (n,) + ((self.channel,) if self.channel is not None else ()) + tuple(rest)
        return np.asarray(self.array[full])

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out.astype(dtype) if dtype is not None else out


def store_views(store, kind: str, channel: int | None = None, image: int | None = 0) -> tuple[object, bool]:
    """(layer data, multiscale) of one kind of a prediction store (``"probabilities"`` one
    ``channel`` of, ``"labels"`` or ``"uncertainty"``): every pyramid level, finest first,
    for a multiscale layer, or the one level there is."""
    read = getattr(store, kind)
    views = [ChannelView(read(level), channel if kind != "labels" else None, image=image)
             for level in range(store.levels)]
    return (views, True) if len(views) > 1 else (views[0], False)


# -- paths -------------------------------------------------------------------------------
def default_output_dir() -> Path:
    """``<temp>/napari-qlty``: where outputs go when no path is chosen."""
    return Path(tempfile.gettempdir()) / "napari-qlty"


def default_path(layer_name: str | None, suffix: str) -> Path:
    stem = re.sub(r"[^\w.-]+", "_", layer_name or "image").strip("_") or "image"
    return default_output_dir() / f"{stem}-{suffix}.zarr"


def is_blank_path(path) -> bool:
    return path is None or str(path).strip() in ("", ".")


def resolve_path(path, layer_name: str | None, suffix: str) -> Path:
    """The chosen path, or the default one in the temp folder (its folder is created)."""
    p = default_path(layer_name, suffix) if is_blank_path(path) else Path(os.path.expanduser(str(path)))
    if p.suffix != ".zarr":
        p = p.with_name(p.name + ".zarr")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


class Failed:
    """An error caught in a worker thread, handed to the GUI thread to be shown.

    (A worker must not return the exception itself: superqt re-raises returned exceptions.)
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error


# -- text --------------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    """``4.2 s`` under a minute, else ``m:ss`` (``h:mm:ss`` past an hour)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, float(seconds))
    if seconds < 59.5:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


#: engine parameter names as the widgets' fields say them
FIELD_NAMES = {"border_weight": "border weight", "min_labelled": "min labelled", "batch_size": "batch size",
               "ignore_label": "unlabelled value"}


def error_text(exc: BaseException, replace: str | None = None) -> str:
    """One line for a label, in the widgets' words: the exception's message with the
    engine's parameter names as field names, and what ticking ``replace`` (the widget's
    replace check box) would allow when the path holds a store of ours."""
    message = str(exc).strip() or type(exc).__name__
    for name, field in FIELD_NAMES.items():
        message = message.replace(name, field)
    if replace and getattr(exc, "remedy", None) == "overwrite":
        message += f" (tick \u201c{replace}\u201d to replace it)"
    return message


def notify_error(exc: BaseException | str) -> None:
    """Show an error in the viewer's notification area.

    An exception keeps its traceback (the notification's "View Traceback" button); it is
    dispatched as a notification rather than raised, so it never takes the viewer down.
    """
    from napari.utils.notifications import Notification, notification_manager, show_error

    if isinstance(exc, BaseException):
        notification_manager.dispatch(Notification.from_exception(exc))
    else:
        show_error(f"napari-qlty: {exc}")


def notify_info(text: str) -> None:
    from napari.utils.notifications import show_info

    show_info(f"napari-qlty: {text}")


def thousands(n: int) -> str:
    return f"{int(n):,}"


def join_counts(counts: Sequence[int]) -> str:
    return " × ".join(str(int(c)) for c in counts)
