"""Running one window through a model to learn its output channels, with its own error."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from .devices import as_device, is_oom


def static_batch(model) -> int | None:
    """The batch size a torch.export program was specialised to, or None if it is dynamic."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    for node in model.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.ndim > 0:
                size = val.shape[0]
                return size if isinstance(size, int) else None
            return None
    return None


def _export_hint(model) -> str:
    if not isinstance(model, torch.fx.GraphModule):
        return ""
    for node in model.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            shape = tuple(d if isinstance(d, int) else str(d) for d in node.meta["val"].shape)
            return (
                f"; the exported program expects inputs of shape {shape}: export with the "
                "window shape and a dynamic batch, e.g. dynamic_shapes=({0: Dim('batch')},)"
            )
    return ""


def check_output(out, in_shape: tuple[int, ...]) -> None:
    expected = f"(batch, C_out, {', '.join(map(str, in_shape[2:]))})"
    if not isinstance(out, torch.Tensor):
        what = type(out).__name__
        if isinstance(out, (tuple, list)):
            what = f"{what} of {len(out)} items"
        raise ValueError(
            f"the model must return one torch.Tensor {expected} for a batch {in_shape}, got a "
            f"{what}; wrap it to return the one output to blend"
        )
    shape = tuple(out.shape)
    fits = out.ndim == len(in_shape) and shape[0] == in_shape[0] and shape[2:] == in_shape[2:]
    if not fits or shape[1] < 1:
        raise ValueError(
            f"the model's output {shape} does not fit its input {in_shape}: it must be "
            f"{expected} with the same batch and spatial size"
        )


_CHANNELS = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")
_DIMENSIONS = re.compile(r"Expected (\d+)D \(unbatched\) or (\d+)D \(batched\) input to conv(\d)d, "
                         r"but got input of size: \[([^\]]*)\]")


def model_message(error: BaseException) -> str:
    """The model's own reason for failing, in one line.

    TorchScript wraps it in a trace of the scripted code: its last line is the reason.
    A wrong number of channels or of axes is said in the image's terms.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    if ": " in text and text.split(": ", 1)[0].endswith(("Error", "Exception")):
        text = text.split(": ", 1)[1]
    channels = _CHANNELS.search(text)
    if channels:
        return expects_channels(int(channels.group(1)), int(channels.group(2)))
    dims = _DIMENSIONS.search(text)
    if dims:
        spatial = int(dims.group(3))
        given = len([d for d in dims.group(4).split(",") if d.strip()]) - 2
        return (f"the model takes {spatial}D windows, but the windows are {given}D: "
                f"tile {spatial} axes (for a time-lapse, run each time point on its own)")
    return text


def expects_channels(expected: int, given: int) -> str:
    """``the model expects 1 channel, the image has 3``."""
    return f"the model expects {expected} channel{'s' if expected != 1 else ''}, the image has {given}"


def expected_channels(model) -> int | None:
    """The input channels a module says it takes: its ``in_channels`` (our networks, and
    convolutions), or the first layer's of an ``nn.Sequential``; None when it does not say."""
    if isinstance(model, torch.jit.ScriptModule):
        return None
    if isinstance(model, torch.nn.Sequential) and len(model):
        return expected_channels(model[0])
    value = getattr(model, "in_channels", None) if isinstance(model, torch.nn.Module) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def call_checked(model: Callable, x: torch.Tensor, dtype: torch.dtype):
    """``model(x)`` without gradients; a failure other than out-of-memory becomes a ValueError
    that says the model's own reason."""
    try:
        with torch.no_grad():
            return model(x)
    except Exception as e:
        if is_oom(e):
            raise
        raise ValueError(
            f"{model_message(e)} (the model failed on a window of shape {tuple(x.shape[1:])}, "
            f"{str(dtype).removeprefix('torch.')}, on {x.device}){_export_hint(model)}"
        ) from e


def check_input_channels(model, in_channels: int) -> None:
    """ValueError when the model says it takes another number of channels than the image has."""
    expected = expected_channels(model)
    if expected is not None and expected != int(in_channels):
        raise ValueError(expects_channels(expected, int(in_channels)))


def check_model_output(
    model: Callable,
    in_channels: int,
    window: Sequence[int],
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Run one zeros window (1, C, *window) through ``model``; return its output channels.

    ValueError naming both shapes if the output is not a tensor of (1, C_out, *window),
    or if the model fails on the window (the failure is chained).
    """
    dev = as_device(device)
    check_input_channels(model, in_channels)
    shape = (1, int(in_channels), *(int(w) for w in window))
    out = call_checked(model, torch.zeros(shape, dtype=dtype, device=dev), dtype)
    check_output(out, shape)
    return int(out.shape[1])
