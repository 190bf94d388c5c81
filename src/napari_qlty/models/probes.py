"""Running one window through a model to learn its output channels, with its own error."""

from __future__ import annotations

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


def call_checked(model: Callable, x: torch.Tensor, dtype: torch.dtype):
    """``model(x)`` without gradients; a failure other than out-of-memory becomes a ValueError."""
    try:
        with torch.no_grad():
            return model(x)
    except Exception as e:
        if is_oom(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"the model failed on a zeros batch of shape {tuple(x.shape)} ({dtype}, {x.device}): "
            f"{type(e).__name__}: {first}{_export_hint(model)}"
        ) from e


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
    shape = (1, int(in_channels), *(int(w) for w in window))
    out = call_checked(model, torch.zeros(shape, dtype=dtype, device=dev), dtype)
    check_output(out, shape)
    return int(out.shape[1])
