"""Loading model files once per process and device, without unpickling code."""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping

import torch

from ..core.inference import NORMALISATION_ATTRIBUTE, for_inference
from ..core.intensity import Normalisation
from .archive import check_exported_archive
from .checkpoints import read_recipe
from .devices import as_device
from .factories import check_trusted
from .spec import KIND_LABELS, PICKLED_MODEL_MESSAGE, ModelLoadError, ModelSpec, model_kind

_CACHE: dict[tuple, tuple[tuple, object]] = {}


_CACHE_LOCK = threading.Lock()


_KEY_LOCKS: dict[tuple, threading.Lock] = {}


def clear_model_cache() -> None:
    """Forget every model loaded in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _KEY_LOCKS.clear()


def load_model(
    spec: ModelSpec | str | os.PathLike | torch.nn.Module | Callable,
    device: str | torch.device = "cpu",
) -> torch.nn.Module | Callable:
    """The model described by ``spec``, in eval mode on ``device``.

    Files are loaded once per process and device (a thread-safe cache, refreshed when the
    file's size or modification time changes). An ``nn.Module`` is returned ready for
    inference without changing it (:func:`~napari_qlty.core.inference.for_inference`);
    any other callable as it is.
    """
    if isinstance(spec, torch.nn.Module):
        return for_inference(spec, as_device(device))  # the caller's module is never changed
    if isinstance(spec, (str, os.PathLike)):
        spec = ModelSpec.parse(spec)
    elif not isinstance(spec, ModelSpec):
        if callable(spec):
            return spec
        raise TypeError(f"a model is a ModelSpec, a path, or a callable; got {type(spec).__name__}")
    dev = as_device(device)
    try:
        st = os.stat(spec.path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {spec.path}") from None
    key = (spec, str(dev))
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one load per key; other keys load in parallel
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        model = _load_uncached(spec, dev)
        with _CACHE_LOCK:
            _CACHE[key] = (stamp, model)
    return model


def _load_uncached(spec: ModelSpec, device: torch.device):
    kind = model_kind(spec.path)
    if kind != "state_dict" and spec.factory is not None:
        raise ModelLoadError(
            f"{spec.path} is a {KIND_LABELS[kind]}, which carries its own code; a factory "
            f"({spec.factory}) is only for state dict files"
        )
    if kind == "torchscript":
        try:
            model = torch.jit.load(spec.path, map_location=device)
        except Exception as e:
            raise ModelLoadError(
                f"{spec.path}: torch.jit.load failed: {type(e).__name__}: {e}"
            ) from e
        return model.eval()
    if kind == "export":
        return _load_exported(spec.path, device)
    if kind == "bioimageio":
        from .bioimageio.running import load_package_model

        return load_package_model(spec, device)
    return _load_state_dict(spec, device)


def _load_exported(path: str, device: torch.device):
    check_exported_archive(path)
    try:
        program = torch.export.load(path)
    except Exception as e:
        raise ModelLoadError(f"{path}: torch.export.load failed: {type(e).__name__}: {e}") from e
    if device.type != "cpu":
        try:
            from torch.export.passes import move_to_device_pass
        except ImportError:  # older torch: parameters move below, constants may not
            pass
        else:
            program = move_to_device_pass(program, device)
    if "check_guards" in inspect.signature(program.module).parameters:
        module = program.module(check_guards=False)  # guard code is exec'd Python
    else:
        if getattr(program, "_guards_code", None):
            raise ModelLoadError(f"{path}: guard code in the archive would be executed; refused")
        module = program.module()
    module = module.to(device)
    switched = _exported_to_eval(module)
    if switched:
        warnings.warn(
            f"{os.path.basename(path)} was exported in training mode; switched {switched} "
            "dropout/batch-norm call(s) to inference (export from model.eval() to avoid this)",
            stacklevel=3,
        )
    return module


def _train_flag_positions() -> dict:
    aten = torch.ops.aten
    table = {}
    for name, index, kw in (
        ("dropout", 2, "train"),
        ("native_dropout", 2, "train"),
        ("feature_dropout", 2, "train"),
        ("alpha_dropout", 2, "train"),
        ("feature_alpha_dropout", 2, "train"),
        ("batch_norm", 5, "training"),
    ):
        packet = getattr(aten, name, None)
        if packet is not None and hasattr(packet, "default"):
            table[packet.default] = (index, kw)
    return table


def _exported_to_eval(module: torch.nn.Module) -> int:
    """Set the ``train``/``training`` flags of dropout and batch norm calls to False.

    Exported graph modules refuse ``.eval()``; a program exported from a model in training
    mode would otherwise drop out activations and normalise with batch statistics.
    """
    table = _train_flag_positions()
    changed = 0
    for sub in module.modules():
        if not isinstance(sub, torch.fx.GraphModule):
            continue
        touched = False
        for node in sub.graph.nodes:
            if node.op != "call_function" or node.target not in table:
                continue
            index, kw = table[node.target]
            if len(node.args) > index and node.args[index] is True:
                args = list(node.args)
                args[index] = False
                node.args = tuple(args)
                touched = True
            elif node.kwargs.get(kw) is True:
                node.kwargs = {**node.kwargs, kw: False}
                touched = True
            else:
                continue
            changed += 1
        if touched:
            sub.recompile()
    return changed


def _unsupported_global(error: Exception) -> str:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return f" (it names {match.group(1)})" if match else ""


def _unpickler_reason(error: Exception) -> str:
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    return match.group(1).strip() if match else str(error).strip().splitlines()[0]


def _not_torch(path) -> str | None:
    """Why a file torch cannot load is no model at all, or None for a torch.save archive
    (a zip), whose own error may say what is wrong with it. (For other bytes torch's
    reason is an opcode, "Unsupported operand 112", which tells a user nothing.)"""
    if zipfile.is_zipfile(path):
        return None
    return ("it is none of TorchScript (.pt), a torch.export program (.pt2), a state dict, "
            "a napari-qlty model or a bioimage.io package")


def _load_state_dict(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    path = spec.path
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise ModelLoadError(
                f"{path}: {PICKLED_MODEL_MESSAGE}{_unsupported_global(e)}"
            ) from None
        raise ModelLoadError(
            f"{path} is not a model file torch can read ({_not_torch(path) or _unpickler_reason(e)})"
        ) from None
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a model file torch can read ({_not_torch(path) or f'{type(e).__name__}: {e}'})"
        ) from None
    state = _unwrap_state_dict(obj, path)
    recipe = read_recipe(obj, path)
    if spec.factory is not None:  # the user's choice (or a file's, then it must be trusted)
        factory, kwargs = spec.factory, dict(spec.factory_kwargs)
        if spec.factory_from_file:
            check_trusted(factory, os.path.basename(path))
    elif recipe is not None:  # a checkpoint of ours: a file names the factory
        factory, kwargs = str(recipe.get("factory", "")), dict(recipe.get("factory_kwargs") or {})
        check_trusted(factory, f"the checkpoint {os.path.basename(path)}")
    else:
        raise ModelLoadError(
            f"{path} holds a state dict (weights only) and no factory says which code builds "
            "the model: give ModelSpec(path, factory='package.module:function') or, on the "
            f"command line, '{path}::package.module:function'"
        )
    build = import_factory(factory)
    try:
        module = build(**kwargs)
    except Exception as e:
        raise ModelLoadError(f"the factory {factory} failed: {type(e).__name__}: {e}") from e
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"the factory {factory} returned a {type(module).__name__}, not a torch.nn.Module"
        )
    module.to(device)
    try:
        module.load_state_dict(_strip_prefix(state, module))
    except RuntimeError as e:
        raise ModelLoadError(
            f"the state dict in {os.path.basename(path)} does not fit the model built by "
            f"{factory}: {e}"
        ) from None
    if recipe is not None:
        describe(module, recipe)
    return module.eval()


def describe(module: torch.nn.Module, recipe: dict) -> torch.nn.Module:
    """Attach what a checkpoint says about its model: the normalisation it was trained
    with (applied by itself in :func:`~napari_qlty.infer` and :func:`~napari_qlty.predict`),
    and its window, axes, class names and inference settings (used by the plugin)."""
    if recipe.get("normalisation"):
        setattr(module, NORMALISATION_ATTRIBUTE, Normalisation.from_json(recipe["normalisation"]))
    info = {k: recipe.get(k) for k in ("window", "axes", "classes", "name", "inference") if recipe.get(k) is not None}
    module.napari_qlty_info = info
    return module


def _unwrap_state_dict(obj, path: str) -> Mapping:
    if isinstance(obj, Mapping):
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model_state_dict", "model"):  # training checkpoints
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                return inner
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__} that is not a state dict (a mapping of names to "
        "tensors, possibly under 'state_dict' or 'model_state_dict')"
    )


def _strip_prefix(state: Mapping, module: torch.nn.Module) -> Mapping:
    """Drop a 'module.' (DataParallel) or '_orig_mod.' (torch.compile) prefix on every key."""
    own = set(module.state_dict())
    if not state or set(state) <= own:
        return state
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) <= own:
                return stripped
    return state


def import_factory(text: str) -> Callable:
    module_name, _, attr = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ModelLoadError(
                f"cannot import the module {module_name!r} of the model factory {text!r}: "
                f"{e} (is it installed, or on sys.path, in this process and on every worker?)"
            ) from None
        raise ModelLoadError(
            f"importing the model factory module {module_name!r} failed: {e}"
        ) from e
    except Exception as e:
        raise ModelLoadError(
            f"importing the model factory module {module_name!r} failed: {type(e).__name__}: {e}"
        ) from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(
                f"the module {module_name!r} has no attribute {attr!r} (factory {text!r})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"the model factory {text!r} is a {type(obj).__name__}, not callable")
    return obj
