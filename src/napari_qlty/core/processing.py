"""A declared chain of operations on intensities, with statistics of the whole volume.

bioimage.io model packages declare what happens to a tensor before the network
(preprocessing) and after it (postprocessing) as a list of named operations:
``scale_range`` (percentiles), ``zero_mean_unit_variance``, ``scale_linear``, ``clip``,
``binarize``, ``sigmoid``, ... A :class:`Processing` is such a list; :meth:`Processing.fit`
measures every statistic it needs once, over the whole volume, with the same exact
histograms (integers of 16 bits or fewer) or documented samples as
:class:`~napari_qlty.core.intensity.Normalisation`, and gives a :class:`FittedProcessing`:
fixed numbers only, applied batch by batch on the device. A window normalised on its own
statistics would meet its neighbour with a step in intensity, a seam in the prediction.

The tensor an operation measures is the one that reaches it: the input mapped by the
operations before it. An output operation may measure the unprocessed input (the spec's
``reference_tensor``); statistics of the model's whole output would need a second pass
over the result and are refused.

Affine operations are applied as ``x -> (x - offset) * scale``, as
:class:`~napari_qlty.core.intensity.Fitted` does, so a percentile or mean-std
normalisation written as ``scale_range`` or ``zero_mean_unit_variance`` (with the same
epsilon) maps every value to the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .intensity import EPS, Fitted, Normalisation, _as_numpy, _numpy_dtype, histogrammed, statistics

#: what each operation takes (bioimage.io's names); values given per channel are tuples
OPERATIONS: dict[str, tuple[str, ...]] = {
    "ensure_dtype": ("dtype",),
    "scale_linear": ("gain", "offset"),
    "scale_range": ("low", "high", "eps", "of_input"),
    "zero_mean_unit_variance": ("eps",),
    "fixed_zero_mean_unit_variance": ("mean", "std", "eps"),
    "clip": ("min", "max", "low", "high"),
    "binarize": ("threshold",),
    "sigmoid": (),
    "softmax": (),
}
STAGES = ("input", "output")
#: bioimage.io's epsilon where a package does not give one
DEFAULT_EPS = 1e-6
_FLOATS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}
_INTEGERS = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")


def _frozen(value):
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Step:
    """One operation: ``op`` (a key of :data:`OPERATIONS`) with its ``kwargs``.

    ``per_channel``: statistics are measured for each channel on its own (the package's
    ``axes`` leave the channel out); otherwise over all channels together.
    """

    op: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown processing operation {self.op!r}; known: {', '.join(OPERATIONS)}")
        items = self.kwargs.items() if isinstance(self.kwargs, Mapping) else self.kwargs
        pairs = tuple(sorted((str(k), _frozen(v)) for k, v in items if v is not None))
        unknown = [k for k, _ in pairs if k not in OPERATIONS[self.op]]
        if unknown:
            raise ValueError(f"{self.op} takes {', '.join(OPERATIONS[self.op]) or 'no arguments'}, "
                             f"not {', '.join(unknown)}")
        object.__setattr__(self, "kwargs", pairs)
        object.__setattr__(self, "per_channel", bool(self.per_channel))
        get = dict(pairs).get
        if self.op == "ensure_dtype" and get("dtype") not in (*_FLOATS, *_INTEGERS, "bool"):
            raise ValueError(f"ensure_dtype: unknown dtype {get('dtype')!r}")
        if self.op == "scale_range":
            low, high = get("low", 0.0), get("high", 100.0)
            if not 0.0 <= low < high <= 100.0:
                raise ValueError(f"scale_range: percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        if self.op == "clip" and all(get(k) is None for k in ("min", "max", "low", "high")):
            raise ValueError("clip needs min, max or percentiles")

    def get(self, name: str, default=None):
        return dict(self.kwargs).get(name, default)

    @property
    def measures(self) -> bool:
        """True when the step needs statistics of a tensor."""
        if self.op in ("scale_range", "zero_mean_unit_variance"):
            return True
        return self.op == "clip" and (self.get("low") is not None or self.get("high") is not None)

    def describe(self) -> str:
        args = ", ".join(f"{k}={_plain(v)}" for k, v in self.kwargs)
        return f"{self.op}({args})" + (" per channel" if self.per_channel else "")

    def to_json(self) -> dict:
        return {"op": self.op, "kwargs": {k: _plain(v) for k, v in self.kwargs}, "per_channel": self.per_channel}

    @classmethod
    def from_json(cls, data: Mapping) -> Step:
        return cls(data["op"], dict(data.get("kwargs") or {}), bool(data.get("per_channel", False)))


@dataclass(frozen=True)
class Processing:
    """The operations applied to the model's input (``stage="input"``) or to its blended
    output (``stage="output"``), in order."""

    steps: tuple[Step, ...] = ()
    stage: str = "input"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        steps = tuple(s if isinstance(s, Step) else Step.from_json(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if self.stage == "output":
            for s in steps:
                if s.measures and not s.get("of_input"):
                    raise ValueError(
                        f"the output step {s.describe()} needs statistics of the model's whole output, "
                        "which napari-qlty does not measure (only the input's, never per window)"
                    )

    @property
    def identity(self) -> bool:
        return all(s.op == "ensure_dtype" and s.get("dtype") in ("float32", "float64") for s in self.steps)

    def describe(self) -> str:
        return ", ".join(s.describe() for s in self.steps if s.op != "ensure_dtype") or "none"

    def to_json(self) -> dict:
        return {"processing": self.stage, "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: Mapping) -> Processing:
        return cls(tuple(Step.from_json(s) for s in data.get("steps") or ()), data.get("processing", "input"))

    def fit(self, volume, *, sample_voxels: int | None = None) -> FittedProcessing:
        """Measure every statistic over the whole (N, C, *spatial) input ``volume`` once."""
        kwargs = {} if sample_voxels is None else {"sample_voxels": sample_voxels}
        fitted: list[tuple[str, dict]] = []
        stats: list[dict] = []
        for step in self.steps:
            measured: list[dict] = []
            if step.measures:
                seen = volume if (step.get("of_input") or _transparent(fitted, volume)) else \
                    _Mapped(volume, FittedProcessing(self, tuple(fitted)))
                channels = range(volume.shape[1]) if step.per_channel and volume.shape[1] > 1 else (None,)
                percentiles = [q for q in (step.get("low"), step.get("high")) if q is not None]
                if step.op == "scale_range":
                    percentiles = [step.get("low", 0.0), step.get("high", 100.0)]
                for c in channels:
                    part = seen if c is None else _Channel(seen, c)
                    measured.append(statistics(part, percentiles, **kwargs))
            fitted.append(_fix(step, measured))
            stats.extend({"step": step.op, **m} for m in measured)
        return FittedProcessing(self, tuple(fitted), tuple(stats))


def _fix(step: Step, measured: list[dict]) -> tuple[str, dict]:
    """The step with its statistics turned into numbers."""
    get = step.get
    if step.op == "ensure_dtype":
        return "cast", {"dtype": get("dtype")}
    if step.op == "scale_linear":
        return "linear", {"gain": _values(get("gain", 1.0)), "offset": _values(get("offset", 0.0))}
    if step.op == "scale_range":
        eps = float(get("eps", DEFAULT_EPS))
        lo = [m[f"p{get('low', 0.0):g}"] for m in measured]
        hi = [m[f"p{get('high', 100.0):g}"] for m in measured]
        return "affine", {"offset": tuple(lo), "scale": tuple(1.0 / (h - lo_ + eps) for lo_, h in zip(lo, hi))}
    if step.op == "zero_mean_unit_variance":
        eps = float(get("eps", DEFAULT_EPS))
        return "affine", {"offset": tuple(m["mean"] for m in measured),
                          "scale": tuple(1.0 / (m["std"] + eps) for m in measured)}
    if step.op == "fixed_zero_mean_unit_variance":
        eps = float(get("eps", DEFAULT_EPS))
        mean, std = _values(get("mean")), _values(get("std"))
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"fixed_zero_mean_unit_variance: {len(mean)} means but {len(std)} deviations")
        n = max(len(mean), len(std))
        mean, std = mean * (n // len(mean)), std * (n // len(std))
        return "affine", {"offset": mean, "scale": tuple(1.0 / (s + eps) for s in std)}
    if step.op == "clip":
        lo = _values(get("min")) if get("min") is not None else (
            tuple(m[f"p{get('low'):g}"] for m in measured) if get("low") is not None else (-math.inf,))
        hi = _values(get("max")) if get("max") is not None else (
            tuple(m[f"p{get('high'):g}"] for m in measured) if get("high") is not None else (math.inf,))
        return "clip", {"min": lo, "max": hi}
    if step.op == "binarize":
        return "binarize", {"threshold": _values(get("threshold"))}
    return step.op, {}  # sigmoid, softmax


def _values(value) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, tuple) else (float(value),)


@dataclass(frozen=True)
class FittedProcessing:
    """A :class:`Processing` with its statistics measured: fixed operations only, the same for
    every window. ``apply`` maps a floating batch (N, C, *spatial) in place where it may."""

    processing: Processing
    ops: tuple[tuple[str, dict], ...]
    statistics: tuple[dict, ...] = field(default=(), compare=False)

    @property
    def identity(self) -> bool:
        return self.processing.identity

    @property
    def gives_probabilities(self) -> bool:
        """True when the last value-changing operation leaves values in [0, 1]."""
        kinds = [k for k, _ in self.ops if k != "cast"]
        return bool(kinds) and kinds[-1] in ("sigmoid", "softmax", "binarize")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        for kind, p in self.ops:
            x = _apply(kind, p, x)
        return x

    def to_json(self) -> dict:
        return {**self.processing.to_json(),
                "ops": [[k, {n: list(v) if isinstance(v, tuple) else v for n, v in p.items()}] for k, p in self.ops],
                "statistics": [dict(s) for s in self.statistics]}

    @classmethod
    def from_json(cls, data: Mapping) -> FittedProcessing:
        ops = tuple((str(k), {n: tuple(v) if isinstance(v, list) else v for n, v in p.items()})
                    for k, p in data["ops"])
        return cls(Processing.from_json(data), ops, tuple(dict(s) for s in data.get("statistics") or ()))


def _per_channel(values: tuple[float, ...], x: torch.Tensor):
    """A Python number for one value (as :class:`Fitted` uses), else a (1, C, 1, ...) tensor."""
    if len(values) == 1:
        return values[0]
    if x.shape[1] != len(values):
        raise ValueError(f"the processing has values for {len(values)} channels, the tensor has {x.shape[1]}")
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.ndim - 2)))


def _apply(kind: str, p: dict, x: torch.Tensor) -> torch.Tensor:
    if kind == "affine":
        return x.sub_(_per_channel(p["offset"], x)).mul_(_per_channel(p["scale"], x))
    if kind == "linear":
        return x.mul_(_per_channel(p["gain"], x)).add_(_per_channel(p["offset"], x))
    if kind == "clip":
        lo, hi = _per_channel(p["min"], x), _per_channel(p["max"], x)
        if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
            lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
            hi = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
            return torch.minimum(torch.maximum(x, lo), hi)
        return x.clamp_(lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None)
    if kind == "binarize":
        return (x > _per_channel(p["threshold"], x)).to(x.dtype)
    if kind == "sigmoid":
        return x.sigmoid_()
    if kind == "softmax":
        return x.softmax(1)
    if kind == "cast":
        return _cast(x, p["dtype"])
    raise ValueError(f"unknown fitted operation {kind!r}")


def _cast(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """``ensure_dtype`` on a floating tensor that stays floating: values rounded as the type
    holds them (integers truncated and saturated to the type's range, never wrapped)."""
    if dtype in _FLOATS:
        target = _FLOATS[dtype]
        if torch.finfo(target).bits < torch.finfo(x.dtype).bits or target == torch.bfloat16:
            return x.to(target).to(x.dtype)
        return x
    if dtype == "bool":
        return (x != 0).to(x.dtype)
    info = np.iinfo(dtype)
    return x.trunc_().clamp_(float(info.min), float(info.max))


def _transparent(fitted: Sequence[tuple[str, dict]], volume) -> bool:
    """True when the operations so far keep every stored value as it is (casts to a float
    type that holds the stored type exactly), so statistics may be measured on the stored
    volume (exact histograms for integers)."""
    stored = _numpy_dtype(volume)
    for kind, p in fitted:
        if kind != "cast" or p["dtype"] not in ("float32", "float64"):
            return False
        if not (histogrammed(stored) or stored.kind == "f" and stored.itemsize <= np.dtype(p["dtype"]).itemsize):
            return False
    return True


class _Mapped:
    """The volume as the operations before a step leave it (read block by block)."""

    def __init__(self, volume, before: FittedProcessing) -> None:
        self.volume, self.before = volume, before
        self.shape = tuple(volume.shape)
        self.dtype = np.dtype("float64") if _numpy_dtype(volume) == np.float64 else np.dtype("float32")

    def __getitem__(self, key):
        block = _as_numpy(self.volume[key])  # (C, ...) : the image index is an int
        t = torch.from_numpy(np.array(block, dtype=self.dtype, copy=True))  # mapped in place: a copy
        return self.before.apply(t.unsqueeze(0))[0].numpy()


class _Channel:
    """One channel of a volume, as a one-channel volume (statistics per channel)."""

    def __init__(self, volume, channel: int) -> None:
        self.volume, self.channel = volume, channel
        self.shape = (volume.shape[0], 1, *volume.shape[2:])
        self.dtype = volume.dtype

    def __getitem__(self, key):
        key = list(key)
        key[1] = slice(self.channel, self.channel + 1)
        return self.volume[tuple(key)]


def unfitted_from_json(data: Mapping | None) -> Normalisation | Processing:
    """The recipe a stored fitted normalisation or processing was measured for."""
    if data and "processing" in data:
        return Processing.from_json(data)
    return Normalisation.from_json(data)


def fitted_from_json(data: Mapping) -> Fitted | FittedProcessing:
    """A fitted normalisation or processing read back from its JSON."""
    return FittedProcessing.from_json(data) if "processing" in data else Fitted.from_json(data)


def normalisation_as_steps(normalisation: Normalisation) -> tuple[Step, ...]:
    """A napari-qlty normalisation as bioimage.io operations that map every value to the same
    bits (the same epsilon, the same order of operations)."""
    if normalisation.mode == "percentile":
        return (Step("scale_range", {"low": normalisation.low, "high": normalisation.high, "eps": EPS}),)
    if normalisation.mode == "mean-std":
        return (Step("zero_mean_unit_variance", {"eps": EPS}),)
    if normalisation.mode == "range":
        width = normalisation.high - normalisation.low
        return (Step("scale_linear", {"gain": 1.0 / width, "offset": -normalisation.low / width}),)
    return ()
