"""Optional ways to run a model faster: lower precision, channels-last memory, compiling.

All are off by default, since each may change the result a little (lower precision) or
cost time up front (compiling); ``benchmarks/bench_speed_options.py`` measures what each
gains and how far its results move from float32 on the benchmark workloads. None of
them changes the caller's model: the memory format is changed on a private copy and
compiling wraps the module.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

PRECISIONS = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Speed:
    """``precision``: run the model under ``torch.autocast`` to bfloat16 or float16
    (outputs come back as float32); ``channels_last``: channels-last memory for 2D and 3D
    windows (faster convolutions on many GPUs); ``compile``: ``torch.compile`` the model
    (a one-off compile, then faster batches)."""

    precision: str = "float32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def default(self) -> bool:
        return self == Speed()

    def to_json(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}


#: the last few models made, so the regions of a run share one (a compiled model is
#: compiled once); a handful, as it keeps them alive
_made: OrderedDict[tuple, tuple[Callable, Callable]] = OrderedDict()
_lock = threading.Lock()


def sped_up(model: Callable, speed: Speed, device: torch.device, spatial_axes: int) -> Callable:
    """``model`` run as ``speed`` says, on ``device`` (the model must already be there).

    Made once per model, speed and device in a process, so the regions of a run share
    one compiled model instead of compiling it again each.
    """
    if speed.default:
        return model
    key = (id(model), speed, str(device), spatial_axes)
    with _lock:
        hit = _made.get(key)
        if hit is None or hit[0] is not model:
            hit = _made[key] = (model, _make(model, speed, device, spatial_axes))
            while len(_made) > 4:
                _made.popitem(last=False)
        _made.move_to_end(key)
        return hit[1]


def _make(model: Callable, speed: Speed, device: torch.device, spatial_axes: int) -> Callable:
    memory_format = None
    if speed.channels_last:
        memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial_axes)
        if memory_format is None:
            raise ValueError(f"channels_last applies to 2D and 3D windows, not {spatial_axes}D ones")
        if isinstance(model, torch.nn.Module):
            with warnings.catch_warnings():  # a TorchScript module's .to() reads .grad of its weights
                warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
                model = copy.deepcopy(model).to(memory_format=memory_format)
    if speed.compile:
        model = torch.compile(model)
    autocast = None if speed.precision == "float32" else getattr(torch, speed.precision)
    return _Fast(model, device, autocast, memory_format)


class _Fast:
    """A model called with channels-last windows and/or under autocast, giving float32 back."""

    def __init__(self, model: Callable, device: torch.device, autocast: torch.dtype | None,
                 memory_format: torch.memory_format | None) -> None:
        self.model, self.device, self.autocast, self.memory_format = model, device, autocast, memory_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.memory_format is not None:
            batch = batch.contiguous(memory_format=self.memory_format)
        if self.autocast is None:
            return self.model(batch)
        with torch.autocast(self.device.type, dtype=self.autocast):
            out = self.model(batch)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out
