"""Batch sizes that fit in memory, and halving a batch on out-of-memory."""

from __future__ import annotations

import ctypes
import functools
import math
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .devices import as_device, is_oom
from .probes import call_checked, check_output, static_batch


def give_back_memory() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; nothing elsewhere).

    glibc keeps what was freed for later, per thread, so a run's resident memory would
    keep the high-water mark of every batch and region; trimming between them keeps it to
    what is live, and the memory budget holds.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def available_host_memory() -> int:
    """MemAvailable from /proc/meminfo, capped by a cgroup limit; sysconf elsewhere."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 2 << 30
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            available = min(available, max(int(limit) - usage, 0))
        break
    return available


def _floor_pow2(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def auto_batch_size(
    model: Callable,
    in_channels: int,
    window: Sequence[int],
    device: str | torch.device,
    budget_bytes: int | None = None,
    start: int = 64,
    *,
    dtype: torch.dtype = torch.float32,
) -> int:
    """The largest power of 2 <= ``start`` whose batch should fit in memory (at least 1).

    The cost of a window is :func:`window_cost`'s; the budget is ``budget_bytes``, or on
    cuda the free memory (``mem_get_info`` plus torch's cached blocks), elsewhere half the
    available memory (cgroup-aware MemAvailable on Linux). On cuda the result is tried once
    and halved on out-of-memory. A torch.export program with a fixed batch of 1 gives 1.
    """
    if start < 1:
        raise ValueError(f"start must be >= 1, got {start}")
    dev = as_device(device)
    cap = _floor_pow2(start)
    window = tuple(int(w) for w in window)
    static = static_batch(model)
    if static is not None:
        if static == 1:
            return 1
        raise ValueError(
            f"the exported program only takes batches of exactly {static}; re-export it with a "
            "dynamic batch, e.g. dynamic_shapes=({0: Dim('batch')},)"
        )
    per_window, fixed, _ = window_cost(model, in_channels, window, dev, dtype)
    if per_window is None:  # the model refused a batch of 2
        return 1
    if budget_bytes is None:
        budget_bytes = _default_budget(dev)
    n = (int(budget_bytes) - fixed) // max(per_window, 1)
    n = min(cap, _floor_pow2(n)) if n >= 1 else 1
    if dev.type == "cuda" and n > 1:
        n = _confirm_cuda(model, in_channels, window, dev, dtype, n)
    return n


def _default_budget(dev: torch.device) -> int:
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free * 0.9)
    if dev.type == "mps":
        try:
            total = torch.mps.recommended_max_memory()
            used = torch.mps.driver_allocated_memory()
            return int(max(total - used, 0) * 0.8)
        except (AttributeError, RuntimeError):
            pass
    return available_host_memory() // 2


class _PeakTracker(TorchDispatchMode):
    """Bytes held by tensors that operators create, and the most held at once.

    Allocation sizes and the moments tensors die are the same on every run (reference
    counting frees them), so on a CPU this measures what a window costs, deterministically.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self.live: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(t, self._free, key)
        return out


def _measure_host(model, in_channels, window, dev, dtype):
    """(bytes per window, fixed bytes, C_out) from the peak tensor bytes at batch 1 and 2,
    and on a CPU from the growth of the process's resident high-water mark in the same
    calls (:class:`_ResidentPeak`). Three calls: the first, at batch 1, warms the
    allocator and the operators up and is not counted."""
    tensors, resident, c_out = [], [], 0
    for batch in (1, 1, 2):
        x = torch.zeros((batch, in_channels, *window), dtype=dtype, device=dev)
        tracker, rss = _PeakTracker(), _ResidentPeak(dev)
        try:
            with rss, tracker:
                out = call_checked(model, x, dtype)
        except Exception as e:
            if batch == 1 or not (isinstance(e, ValueError) or is_oom(e)):
                raise
            warnings.warn(f"the model refused a batch of 2 ({e}); using batch size 1", stacklevel=3)
            return (None, 0), c_out
        check_output(out, tuple(x.shape))
        c_out = int(out.shape[1])
        cast = x.numel() * x.element_size()  # the window's cast copy too
        tensors.append(tracker.peak + cast)
        resident.append(None if rss.growth is None else rss.growth + cast)
        del out, x
    per_window, fixed = _split(tensors[1:], in_channels, c_out, window, dtype)
    if None not in resident[1:]:
        r_window, r_fixed = _split(resident[1:], in_channels, c_out, window, dtype)
        per_window, fixed = max(per_window, r_window), max(fixed, r_fixed)
    return (per_window, fixed), c_out


class _ResidentPeak:
    """Growth of the process's peak resident memory inside the ``with`` block, on a CPU
    (Linux: the kernel's high-water mark, reset on entry); ``growth`` is None elsewhere.

    This sees what the tensor count cannot: the operators' own workspaces (a CPU
    convolution's unfolded columns) and the threads they run on.
    """

    def __init__(self, dev: torch.device) -> None:
        self.enabled = dev.type == "cpu"
        self.growth: int | None = None
        self._before = 0

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise OSError(key)

    def __enter__(self) -> _ResidentPeak:
        if self.enabled:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._before = self._status("VmRSS")
            except OSError:
                self.enabled = False
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and exc[0] is None:
            try:
                self.growth = max(0, self._status("VmHWM") - self._before)
            except OSError:
                self.growth = None


def _split(peaks, in_channels, c_out, window, dtype) -> tuple[int, int]:
    itemsize = torch.empty((), dtype=dtype).element_size()
    io_bytes = (in_channels + c_out) * math.prod(window) * itemsize
    per_window = max(peaks[1] - peaks[0], io_bytes)
    return per_window, max(peaks[0] - per_window, 0)


def window_cost(
    model: Callable,
    in_channels: int,
    window: Sequence[int],
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    safety_factor: float = 1.25,
) -> tuple[int | None, int, int]:
    """``(bytes per window, fixed bytes, C_out)`` of running ``model`` on such windows.

    Measured from the peak memory at batch 1 and 2: on cuda the allocator's peak; on a CPU
    the larger of the tensors the model's operators create and the growth of the
    process's resident high-water mark (which also sees operators' own workspaces).
    ``safety_factor`` covers what none of them sees. Bytes per window are None when the
    model refuses a batch of 2. A run stores the plan it made, so a resume uses the same
    regions even where a measurement varies a little. A module of a structure measured
    before in this process is not run again (:func:`structure_key`).
    """
    dev = as_device(device)
    window = tuple(int(w) for w in window)
    structure = structure_key(model)
    key = None if structure is None else (structure, int(in_channels), window, str(dev), str(dtype), safety_factor)
    if key is not None:
        with _COSTS_LOCK:
            if key in _COSTS:
                return _COSTS[key]
    if dev.type == "cuda":
        per_window, fixed, c_out = _measure_cuda(model, in_channels, window, dev, dtype)
    else:
        (per_window, fixed), c_out = _measure_host(model, in_channels, window, dev, dtype)
    if per_window is not None:
        per_window = int(per_window * safety_factor)
    cost = per_window, int(fixed * safety_factor), c_out
    if key is not None:
        with _COSTS_LOCK:
            _COSTS[key] = cost
    return cost


#: window costs measured in this process, by model structure (:func:`structure_key`)
_COSTS: dict[tuple, tuple[int | None, int, int]] = {}
_COSTS_LOCK = threading.Lock()
_PLAIN = (bool, int, float, str, type(None))


def structure_key(model) -> tuple | None:
    """What a module's memory use depends on: its layers (their classes and settings),
    the shapes and dtypes of its tensors and its plain attributes, not its weights'
    values; so a model built alike (the next round of the same networks) reuses the
    measurement, and probing, which runs several windows, happens once per process.
    None for scripted programs and plain callables: they are measured every time."""
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None
    parts: list = [repr(model), model.code if isinstance(model, torch.fx.GraphModule) else ""]
    for name, module in model.named_modules():
        plain = tuple(sorted(
            (k, repr(v)) for k, v in vars(module).items()
            if not k.startswith("_") and (isinstance(v, _PLAIN) or (
                isinstance(v, (tuple, list)) and all(isinstance(e, _PLAIN) for e in v)))
        ))
        parts.append((name, type(module).__module__, type(module).__qualname__, plain))
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        parts.append((name, tuple(t.shape), str(t.dtype), str(t.device)))
    return tuple(parts)


def batch_memory(model: Callable, in_channels: int, window: Sequence[int], batch_size: int,
                 device: str | torch.device, dtype: torch.dtype = torch.float32) -> int:
    """Bytes one batch of ``batch_size`` windows takes inside ``model`` (see :func:`window_cost`)."""
    per_window, fixed, c_out = window_cost(model, in_channels, window, device, dtype)
    if per_window is None:  # only batches of 1 run: count what one window holds
        per_window = (in_channels + c_out) * math.prod(window) * torch.empty((), dtype=dtype).element_size()
    return fixed + batch_size * per_window
def _measure_cuda(model, in_channels, window, dev, dtype):
    """(bytes per window, fixed bytes, C_out) from peak allocations at batch 1 and 2."""
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    peaks = []
    c_out = 0
    for batch in (1, 2):
        torch.cuda.reset_peak_memory_stats(dev)
        x = torch.zeros((batch, in_channels, *window), dtype=dtype, device=dev)
        try:
            out = call_checked(model, x, dtype)
        except Exception as e:
            if batch == 1 or not (isinstance(e, ValueError) or is_oom(e)):
                raise
            warnings.warn(f"the model refused a batch of 2 ({e}); using batch size 1", stacklevel=3)
            return None, 0, c_out
        check_output(out, tuple(x.shape))
        c_out = int(out.shape[1])
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        del out, x
    per_window, fixed = _split(peaks, in_channels, c_out, window, dtype)
    return per_window, fixed, c_out


def _confirm_cuda(model, in_channels, window, dev, dtype, n: int) -> int:
    while n > 1:
        try:
            x = torch.zeros((n, in_channels, *window), dtype=dtype, device=dev)
            with torch.no_grad():
                model(x)
            return n
        except Exception as e:
            if not is_oom(e):
                raise
        x = None
        torch.cuda.empty_cache()
        n //= 2
    return 1


_REMEMBERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_REMEMBERED_BY_ID: dict[int, int] = {}  # models that cannot be weakly referenced


_REMEMBER_LOCK = threading.Lock()


def remembered_batch_size(model) -> int | None:
    """The batch size that last worked after an out-of-memory error (None: never ran out)."""
    with _REMEMBER_LOCK:
        try:
            return _REMEMBERED.get(model)
        except TypeError:
            return _REMEMBERED_BY_ID.get(id(model))


def forget_batch_size(model=None) -> None:
    """Let ``model`` (every model, if None) try full batches again."""
    with _REMEMBER_LOCK:
        if model is None:
            _REMEMBERED.clear()
            _REMEMBERED_BY_ID.clear()
            return
        try:
            _REMEMBERED.pop(model, None)
        except TypeError:
            _REMEMBERED_BY_ID.pop(id(model), None)


def _remember(model, size: int) -> None:
    with _REMEMBER_LOCK:
        try:
            old = _REMEMBERED.get(model)
            _REMEMBERED[model] = size if old is None else min(old, size)
        except TypeError:
            old = _REMEMBERED_BY_ID.get(id(model))
            _REMEMBERED_BY_ID[id(model)] = size if old is None else min(old, size)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def run_with_oom_backoff(model: Callable, batch: torch.Tensor, min_batch: int = 1) -> torch.Tensor:
    """``model(batch)``, splitting the batch in halves on out-of-memory until it fits.

    Out-of-memory is ``torch.cuda.OutOfMemoryError`` or a RuntimeError saying "out of
    memory" (mps) or "can't allocate memory" (cpu). Parts are run in order and
    concatenated, so the result equals one call on the whole batch. The part size that
    worked is remembered per model (see :func:`remembered_batch_size`): later calls start
    there. At ``min_batch`` windows the error is raised again with the batch shape and
    device in its message.
    """
    min_batch = max(1, int(min_batch))
    n = int(batch.shape[0])
    remembered = remembered_batch_size(model)
    size = n if remembered is None else max(1, min(n, remembered))
    outs = []
    start = 0
    shrunk = False
    with torch.no_grad():
        while start < n:
            part = batch[start : start + size]
            failure = None
            try:
                out = model(part)
            except Exception as e:
                if not is_oom(e):
                    raise
                if size <= min_batch:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    message = (
                        f"out of memory running the model on {len(part)} window(s) of shape "
                        f"{tuple(part.shape[1:])} on {batch.device}, the smallest batch allowed "
                        f"(min_batch={min_batch}): use a smaller window, a smaller model, half "
                        f"precision, or another device. ({reason})"
                    )
                    if isinstance(e, torch.cuda.OutOfMemoryError):
                        raise torch.cuda.OutOfMemoryError(message) from e
                    raise RuntimeError(message) from e
                failure = type(e)  # leave the except block: its traceback holds the memory
            if failure is not None:
                part = None
                size = max(min_batch, (size + 1) // 2)
                shrunk = True
                _empty_cache(batch.device)
                continue
            outs.append(out)
            start += len(part)
    if shrunk:
        _remember(model, size)
    if not outs:
        with torch.no_grad():
            return model(batch)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
