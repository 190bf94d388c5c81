"""Choosing a device by name, with a reason when it is not available."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: cuda if available, else mps if available, else cpu. Others are checked.

    ``"cuda"`` becomes ``cuda:<current>``, so the same device always has the same name.
    Raises ValueError saying why a device is not available.
    """
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                why = f"this torch ({torch.__version__}) was built without CUDA"
            else:
                why = "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES)"
            raise ValueError(
                f"device {device!r} was asked for but CUDA is not available: {why}; "
                "use 'cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if not 0 <= index < count:
            raise ValueError(
                f"device {device!r}: only {count} CUDA device(s) are visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not mps_available():
            mps = getattr(torch.backends, "mps", None)
            built = mps is not None and mps.is_built()
            why = "no Apple GPU is available" if built else "this torch was built without MPS"
            raise ValueError(f"device {device!r} was asked for but MPS is not available: {why}")
        return torch.device("mps")
    raise ValueError(
        f"device type {dev.type!r} is not supported: use 'auto', 'cpu', 'cuda' or 'mps'"
    )


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


_OOM_TEXT = ("out of memory", "can't allocate memory")


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(t in str(error).lower() for t in _OOM_TEXT)

