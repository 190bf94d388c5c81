"""Models by path: loading without unpickling code, choosing a device, sizing batches.

A :class:`ModelSpec` is a small picklable description of a model file, so any process
(a dask worker, a CLI run resuming yesterday's job) can load the same model::

    spec = ModelSpec.parse("unet.pt")                        # TorchScript
    spec = ModelSpec.parse("unet.pt2")                       # torch.export program
    spec = ModelSpec.parse("weights.pt::my_pkg.nets:unet")   # state dict + factory
    model = load_model(spec, resolve_device("auto"))

Three file kinds are accepted, recognised from their zip contents rather than their
names:

* **TorchScript** (``torch.jit.script``/``trace`` + ``save``): a zip whose entries
  (under one root folder) include ``constants.pkl`` and ``code/``; loaded with
  ``torch.jit.load``.
* **torch.export program** (``torch.export.save``): a zip holding ``archive_format``
  (the text ``pt2``), ``models/<name>.json`` and ``data/weights/...``; loaded with
  ``torch.export.load(path).module()``.
* **state dict** (``torch.save(model.state_dict())``): a ``torch.save`` zip
  (``data.pkl``, no ``constants.pkl``) or the legacy non-zip format; read with
  ``torch.load(weights_only=True)`` and poured into the module built by the factory.

``torch.load`` is never called with ``weights_only=False``: a pickled model object
(``torch.save(model)``) is refused. torch.export's own loader is not hardened against
hostile files (it can unpickle payloads, ``eval`` symbolic-shape strings through
sympy, ``exec`` guard code and resolve graph targets to any ``torch.*`` callable), so
the archive is checked first (see :func:`check_exported_archive`) and guards are not
generated. TorchScript is a program, not data: PyTorch's security policy asks that it
be loaded only from trusted sources. Only a state dict plus an installed factory is
pure data.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import io
import json
import math
import operator
import os
import pickle
import re
import threading
import warnings
import weakref
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "ModelLoadError",
    "ModelSpec",
    "PICKLED_MODEL_MESSAGE",
    "auto_batch_size",
    "check_exported_archive",
    "check_model_output",
    "clear_model_cache",
    "forget_batch_size",
    "load_model",
    "model_kind",
    "remembered_batch_size",
    "resolve_device",
    "run_with_oom_backoff",
]

PICKLED_MODEL_MESSAGE = (
    "this file holds a pickled model object; napari-qlty never unpickles code: save a "
    "TorchScript (torch.jit.script/trace + save), a torch.export program, or a state dict "
    "plus a factory"
)

KIND_LABELS = {
    "torchscript": "TorchScript",
    "export": "torch.export program",
    "state_dict": "state dict",
}

_FACTORY_RE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


class ModelLoadError(ValueError):
    """A model file that cannot (or must not) be loaded; the message says why and what to do."""


# ---------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Picklable description of a model file (and, for a state dict, the code that builds it).

    ``path`` is made absolute (workers may run elsewhere in the file system tree).
    ``factory`` is ``"package.module:function"``; ``factory_kwargs`` its keyword arguments
    as ``((name, value), ...)`` (a dict is accepted and sorted). Values should be plain
    (JSON-like) data: they travel to every worker and into the fingerprint.
    """

    path: str
    factory: str | None = None
    factory_kwargs: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        path = os.fspath(self.path)
        if not isinstance(path, str) or not path:
            raise ValueError(f"ModelSpec.path must be a non-empty path, got {self.path!r}")
        object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(path)))
        if self.factory is not None:
            if not isinstance(self.factory, str) or not _FACTORY_RE.fullmatch(self.factory):
                raise ValueError(
                    f"factory must look like 'package.module:function', got {self.factory!r}"
                )
        kwargs = self.factory_kwargs
        items = kwargs.items() if isinstance(kwargs, Mapping) else kwargs
        try:
            pairs = tuple((k, v) for k, v in items)
        except (TypeError, ValueError):
            raise ValueError(
                f"factory_kwargs must be a dict or ((name, value), ...), got {kwargs!r}"
            ) from None
        for k, _ in pairs:
            if not isinstance(k, str) or not k.isidentifier():
                raise ValueError(f"factory_kwargs names must be identifiers, got {k!r}")
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError(f"factory_kwargs repeats a name: {pairs!r}")
        if pairs and self.factory is None:
            raise ValueError("factory_kwargs given without a factory")
        object.__setattr__(self, "factory_kwargs", tuple(sorted(pairs, key=lambda kv: kv[0])))

    def __hash__(self) -> int:  # values need not be hashable (lists, dicts)
        return hash((self.path, self.factory, repr(self.factory_kwargs)))

    @classmethod
    def parse(cls, text: str | os.PathLike | ModelSpec) -> ModelSpec:
        """``"path"``, ``"path::module:function"`` or ``"path::module:function::{json kwargs}"``."""
        if isinstance(text, ModelSpec):
            return text
        if isinstance(text, os.PathLike):
            return cls(os.fspath(text))
        if not isinstance(text, str):
            raise TypeError(f"a model spec is a path string, got {type(text).__name__}")
        parts = text.strip().split("::", 2)
        path = parts[0].strip()
        if not path:
            raise ValueError(f"no model path in {text!r}")
        factory = parts[1].strip() if len(parts) > 1 else None
        kwargs: dict = {}
        if len(parts) > 2:
            try:
                kwargs = json.loads(parts[2])
            except json.JSONDecodeError as e:
                raise ValueError(f"factory kwargs in {text!r} are not JSON: {e}") from None
            if not isinstance(kwargs, dict):
                raise ValueError(f"factory kwargs in {text!r} must be a JSON object")
        return cls(path, factory or None, tuple(kwargs.items()))

    def __str__(self) -> str:
        """The text form :meth:`parse` reads back (kwargs as JSON)."""
        text = self.path
        if self.factory:
            text += "::" + self.factory
            if self.factory_kwargs:
                text += "::" + json.dumps(dict(self.factory_kwargs), default=repr)
        return text

    def kind(self) -> str:
        """``"torchscript"``, ``"export"`` or ``"state_dict"`` (reads the zip directory only)."""
        return model_kind(self.path)

    def describe(self) -> str:
        """One line for logs: file name, kind, and the factory call for a state dict."""
        name = os.path.basename(self.path)
        try:
            label = KIND_LABELS[self.kind()]
        except FileNotFoundError:
            label = "missing file"
        except (ModelLoadError, OSError):
            label = "unrecognised file"
        text = f"{name} ({label})"
        if self.factory:
            args = ", ".join(f"{k}={v!r}" for k, v in self.factory_kwargs)
            text += f" built by {self.factory}({args})"
        return text

    def fingerprint(self) -> str:
        """sha256 of the file's bytes, plus the factory and its kwargs when there is one.

        Identical files give identical fingerprints wherever they live; one changed byte,
        another factory or other kwargs give another.
        """
        h = hashlib.sha256(b"napari-qlty model v1\0")
        try:
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except FileNotFoundError:
            raise FileNotFoundError(f"model file not found: {self.path}") from None
        if self.factory:
            h.update(b"\0factory\0" + self.factory.encode())
            kwargs = json.dumps(dict(self.factory_kwargs), sort_keys=True, default=repr)
            h.update(b"\0kwargs\0" + kwargs.encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------
# recognising files
# ---------------------------------------------------------------------------------------


def _archive_entries(zf: zipfile.ZipFile) -> dict[str, str]:
    """``{name below the archive's root folder: full name}``; torch writes one root folder."""
    out = {}
    for name in zf.namelist():
        root, sep, rest = name.partition("/")
        out[rest if sep else name] = name
    return out


def model_kind(path: str | os.PathLike) -> str:
    """What a model file holds: ``"torchscript"``, ``"export"`` or ``"state_dict"``.

    Decided from the zip directory (never by unpickling). A file that is not a zip is
    taken for a legacy ``torch.save`` file, which ``torch.load(weights_only=True)`` judges.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        return "state_dict"
    with zipfile.ZipFile(path) as zf:
        entries = _archive_entries(zf)
        if "archive_format" in entries:
            fmt = zf.read(entries["archive_format"]).decode("utf-8", "replace").strip()
            if fmt != "pt2":
                raise ModelLoadError(f"{path}: unknown archive_format {fmt!r} (expected 'pt2')")
            return "export"
        if "serialized_exported_program.json" in entries:
            raise ModelLoadError(
                f"{path} is a torch.export program in the pre-2.8 archive layout, which torch "
                "loads by unpickling; re-save it with torch.export.save from a current torch"
            )
        if "constants.pkl" in entries and any(e.startswith("code/") for e in entries):
            return "torchscript"
        if "data.pkl" in entries:
            return "state_dict"
    raise ModelLoadError(
        f"{path} is a zip archive but not a model napari-qlty knows: no TorchScript "
        "(constants.pkl + code/), torch.export (archive_format 'pt2') or torch.save (data.pkl) "
        "entries"
    )


# ---------------------------------------------------------------------------------------
# torch.export archives: check before torch reads them
# ---------------------------------------------------------------------------------------

_SYMPY_NAMES = frozenset(
    # torch.utils._sympy.functions, as the torch.export deserialiser names them
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv "
    "LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal "
    "ToFloat Identity OpaqueUnaryFn_sqrt Min Max BitwiseFn_bitwise_and BitwiseFn_bitwise_or "
    # plain sympy
    "Symbol Integer Rational Float Add Mul Pow Abs Piecewise ExprCondPair Eq Ne Lt Le Gt Ge "
    "StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not "
    "floor ceiling sqrt oo zoo nan int_oo IntInfinity NegativeIntInfinity true false".split()
)
_SYMPY_KEYWORDS = frozenset(
    "positive negative integer real nonnegative nonpositive finite infinite zero nonzero "
    "even odd rational precision evaluate".split()
)
_SYMBOL_RE = re.compile(r"[A-Za-z]{1,8}\d+")
_SAFE_AST = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name,
    ast.Constant, ast.Load, ast.keyword, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)


def _check_sym_expr(text: str) -> None:
    """A symbolic-shape string must be arithmetic over shape symbols: sympy ``eval``s it."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ModelLoadError(f"symbolic expression {text!r} is not an expression") from None
    for node in ast.walk(tree):
        ok = isinstance(node, _SAFE_AST)
        if isinstance(node, ast.Name):
            ok = node.id in _SYMPY_NAMES or bool(_SYMBOL_RE.fullmatch(node.id))
        elif isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES
        elif isinstance(node, ast.keyword):
            ok = node.arg in _SYMPY_KEYWORDS
        elif isinstance(node, ast.Constant):
            v = node.value
            ok = isinstance(v, (bool, int, float)) or (
                isinstance(v, str) and bool(_SYMBOL_RE.fullmatch(v))
            )
        if not ok:
            raise ModelLoadError(
                f"the exported program holds the symbolic expression {text!r}, which is not "
                "plain shape arithmetic; torch would evaluate it as Python, so it is refused"
            )


_SAFE_OPERATOR = frozenset(
    getattr(operator, n)
    for n in (
        "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ "
        "xor not_ invert lshift rshift truth"
    ).split()
)


def _safe_python_targets() -> frozenset:
    names = [n for n in dir(torch) if n.startswith(("sym_", "_sym_"))]
    fns = {getattr(torch, n) for n in names if callable(getattr(torch, n, None))}
    fns |= {v for k, v in vars(math).items() if callable(v) and not k.startswith("_")}
    return frozenset(fns | _SAFE_OPERATOR)


def _resolve_like_torch(text: str):
    """What torch.export's deserialiser turns a target string into (None: stays a string)."""
    if text.startswith("_operator"):
        obj, names = operator, text.split(".")[1:]
    elif text.startswith("torch"):
        obj, names = torch, text.split(".")[1:]
    elif text.startswith("math"):
        obj, names = math, text.split(".")[1:]
    else:
        return None  # "#ext:op" goes through a registry; anything else is refused by torch
    try:
        for name in names:
            if not hasattr(obj, name):
                return None
            obj = getattr(obj, name)
    except Exception:  # torch.ops raises for unknown operators: torch refuses those too
        return None
    return obj


_OPERATOR_TYPES = (torch._ops.OpOverload, torch._ops.HigherOrderOperator)


def _check_target(text: str, safe: frozenset) -> None:
    if any(part.startswith("__") for part in text.split(".")):
        raise ModelLoadError(f"the exported program names the target {text!r}; refused")
    target = _resolve_like_torch(text)
    if target is None and not text.startswith(("torch", "_operator", "math", "#")):
        raise ModelLoadError(f"the exported program calls {text!r}, which is not a torch operator")
    if target is None or isinstance(target, _OPERATOR_TYPES):
        return
    try:
        if target in safe:
            return
    except TypeError:  # unhashable: certainly not one of ours
        pass
    raise ModelLoadError(
        f"the exported program calls {text!r}, which is not a torch operator (torch.ops.*) "
        "or shape arithmetic; napari-qlty refuses to run it"
    )


_SAFE_TREESPEC_TYPES = frozenset(
    {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
)


def _check_treespec(text: str) -> None:
    """Input/output structure: containers only (pytree contexts can import modules)."""

    def walk(node) -> None:
        if not isinstance(node, dict):
            raise ModelLoadError("malformed input/output spec in the exported program")
        if node.get("type") not in _SAFE_TREESPEC_TYPES:
            raise ModelLoadError(
                f"the exported program's inputs or outputs use the container {node.get('type')!r}; "
                "only tensors in tuples, lists and dicts are accepted"
            )
        context = node.get("context")
        if isinstance(context, str) and "__enum__" in context:
            raise ModelLoadError("the exported program's input/output spec names a Python enum")
        for child in node.get("children_spec") or ():
            walk(child)

    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        raise ModelLoadError("malformed input/output spec in the exported program") from None
    if not (isinstance(spec, list) and len(spec) == 2):
        raise ModelLoadError("malformed input/output spec in the exported program")
    walk(spec[1])


def _check_program_json(doc, safe: frozenset) -> None:
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if key == "expr_str":
                        _check_sym_expr(value)
                    elif key in ("target", "as_operator"):
                        _check_target(value, safe)
                    elif key in ("in_spec", "out_spec"):
                        _check_treespec(value)
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _check_weights_only(data: bytes, what: str, path: str) -> None:
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(
            f"{path}: {what} can only be read by unpickling Python objects "
            f"({type(e).__name__}); napari-qlty never unpickles code"
        ) from None


def check_exported_archive(path: str | os.PathLike) -> None:
    """Refuse a ``.pt2`` archive unless torch can load it without running foreign code.

    Refused: AOTInductor packages (compiled shared libraries), pickled or TorchScript-object
    constants, payloads and nested ``.pt`` files that ``torch.load(weights_only=True)``
    cannot read, graph targets other than ``torch.ops.*`` operators and shape arithmetic,
    symbolic-shape strings that are not arithmetic over shape symbols, and input/output
    specs with types other than tuple/list/dict. Raises :class:`ModelLoadError`.
    """
    path = os.fspath(path)
    safe = _safe_python_targets()
    with zipfile.ZipFile(path) as zf:
        entries = _archive_entries(zf)
        legacy = {"serialized_exported_program.json", "serialized_state_dict.json", "version"}
        if legacy & set(zf.namelist()) or "serialized_exported_program.json" in entries:
            raise ModelLoadError(
                f"{path} holds entries of the pre-2.8 torch.export layout, which torch loads by "
                "unpickling; re-save it with torch.export.save from a current torch"
            )
        models = [e for e in entries if e.startswith("models/") and e.endswith(".json")]
        if not models:
            raise ModelLoadError(
                f"{path}: the .pt2 archive holds no exported program (models/*.json)"
            )
        for rel, full in entries.items():
            if rel.startswith("data/aotinductor/") or rel.endswith((".so", ".dll", ".dylib")):
                raise ModelLoadError(
                    f"{path} is an AOTInductor package (compiled native code); napari-qlty loads "
                    "torch.export programs saved with torch.export.save only"
                )
            base = rel.rsplit("/", 1)[-1]
            is_object = base.startswith(("opaque_obj_", "custom_obj_"))
            if rel.startswith("data/constants/") and is_object:
                raise ModelLoadError(
                    f"{path}: the exported program holds a Python/TorchScript object constant "
                    f"({base}), which torch would unpickle; refused"
                )
            if rel.endswith(".pt"):
                _check_weights_only(zf.read(full), rel, path)
            elif rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(
                "_config.json"
            ):
                folder = rel.rsplit("/", 1)[0]
                config = json.loads(zf.read(full)).get("config", {})
                for fqn, meta in config.items():
                    name = str(meta.get("path_name", ""))
                    if name.startswith(("opaque_obj_", "custom_obj_")):
                        raise ModelLoadError(
                            f"{path}: constant {fqn!r} is a Python/TorchScript object; refused"
                        )
                    if meta.get("use_pickle"):
                        payload = entries.get(f"{folder}/{name}")
                        if payload is None:
                            raise ModelLoadError(f"{path}: payload {name!r} of {fqn!r} is missing")
                        _check_weights_only(zf.read(payload), f"the payload of {fqn!r}", path)
        for rel in models:
            try:
                _check_program_json(json.loads(zf.read(entries[rel])), safe)
            except ModelLoadError as e:
                raise ModelLoadError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------


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
        if _mps_available():
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
        if not _mps_available():
            mps = getattr(torch.backends, "mps", None)
            built = mps is not None and mps.is_built()
            why = "no Apple GPU is available" if built else "this torch was built without MPS"
            raise ValueError(f"device {device!r} was asked for but MPS is not available: {why}")
        return torch.device("mps")
    raise ValueError(
        f"device type {dev.type!r} is not supported: use 'auto', 'cpu', 'cuda' or 'mps'"
    )


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------

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
    file's size or modification time changes). An ``nn.Module`` is moved to the device and
    put in eval mode; any other callable is returned as it is.
    """
    if isinstance(spec, torch.nn.Module):
        return spec.to(_as_device(device)).eval()
    if isinstance(spec, (str, os.PathLike)):
        spec = ModelSpec.parse(spec)
    elif not isinstance(spec, ModelSpec):
        if callable(spec):
            return spec
        raise TypeError(f"a model is a ModelSpec, a path, or a callable; got {type(spec).__name__}")
    dev = _as_device(device)
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


def _load_state_dict(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    path = spec.path
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise ModelLoadError(
                f"{path}: {PICKLED_MODEL_MESSAGE}{_unsupported_global(e)}"
            ) from None
        raise ModelLoadError(
            f"{path} is not a model file torch can read ({_unpickler_reason(e)})"
        ) from None
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a model file torch can read ({type(e).__name__}: {e})"
        ) from None
    state = _unwrap_state_dict(state, path)
    if spec.factory is None:
        raise ModelLoadError(
            f"{path} holds a state dict (weights only) and no factory says which code builds "
            "the model: give ModelSpec(path, factory='package.module:function') or, on the "
            f"command line, '{path}::package.module:function'"
        )
    build = _import_factory(spec.factory)
    try:
        module = build(**dict(spec.factory_kwargs))
    except Exception as e:
        raise ModelLoadError(f"the factory {spec.factory} failed: {type(e).__name__}: {e}") from e
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"the factory {spec.factory} returned a {type(module).__name__}, not a torch.nn.Module"
        )
    module.to(device)
    try:
        module.load_state_dict(_strip_prefix(state, module))
    except RuntimeError as e:
        raise ModelLoadError(
            f"the state dict in {os.path.basename(path)} does not fit the model built by "
            f"{spec.factory}: {e}"
        ) from None
    return module.eval()


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


def _import_factory(text: str) -> Callable:
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


# ---------------------------------------------------------------------------------------
# checking outputs, sizing batches
# ---------------------------------------------------------------------------------------


def _static_batch(model) -> int | None:
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


def _check_output(out, in_shape: tuple[int, ...]) -> None:
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


def _call_checked(model: Callable, x: torch.Tensor, dtype: torch.dtype):
    """``model(x)`` without gradients; a failure other than out-of-memory becomes a ValueError."""
    try:
        with torch.no_grad():
            return model(x)
    except Exception as e:
        if _is_oom(e):
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
    dev = _as_device(device)
    shape = (1, int(in_channels), *(int(w) for w in window))
    out = _call_checked(model, torch.zeros(shape, dtype=dtype, device=dev), dtype)
    _check_output(out, shape)
    return int(out.shape[1])


def _cpu_available_bytes() -> int:
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
    safety_factor: float = 16.0,
) -> int:
    """The largest power of 2 <= ``start`` whose batch should fit in memory (at least 1).

    cuda: peak memory is measured at batch 1 and 2 (``max_memory_allocated``), giving a
    fixed cost and a cost per window, against the free memory (``mem_get_info`` plus
    torch's cached blocks) or ``budget_bytes``; the result is then tried once and halved on
    out-of-memory. cpu/mps: a window costs its input and output tensors times
    ``safety_factor``, against ``budget_bytes`` or half the available memory (cgroup-aware
    MemAvailable on Linux). A torch.export program with a fixed batch of 1 gives 1.
    """
    if start < 1:
        raise ValueError(f"start must be >= 1, got {start}")
    dev = _as_device(device)
    cap = _floor_pow2(start)
    window = tuple(int(w) for w in window)
    static = _static_batch(model)
    if static is not None:
        if static == 1:
            return 1
        raise ValueError(
            f"the exported program only takes batches of exactly {static}; re-export it with a "
            "dynamic batch, e.g. dynamic_shapes=({0: Dim('batch')},)"
        )
    voxels = math.prod(window)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if dev.type == "cuda":
        per_window, fixed, c_out = _measure_cuda(model, in_channels, window, dev, dtype)
        if per_window is None:  # the model refused a batch of 2
            return 1
        if budget_bytes is None:
            free, _ = torch.cuda.mem_get_info(dev)
            free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
            budget_bytes = int(free * 0.9)
    else:
        c_out = check_model_output(model, in_channels, window, dev, dtype)
        per_window = int((in_channels + c_out) * voxels * itemsize * safety_factor)
        fixed = 0
        if budget_bytes is None:
            budget_bytes = _default_budget(dev)
    n = (int(budget_bytes) - fixed) // max(per_window, 1)
    n = min(cap, _floor_pow2(n)) if n >= 1 else 1
    if dev.type == "cuda" and n > 1:
        n = _confirm_cuda(model, in_channels, window, dev, dtype, n)
    return n


def _default_budget(dev: torch.device) -> int:
    if dev.type == "mps":
        try:
            total = torch.mps.recommended_max_memory()
            used = torch.mps.driver_allocated_memory()
            return int(max(total - used, 0) * 0.8)
        except (AttributeError, RuntimeError):
            pass
    return _cpu_available_bytes() // 2


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
            out = _call_checked(model, x, dtype)
        except ValueError as e:
            if batch == 1:
                raise
            warnings.warn(f"{e}; using batch size 1", stacklevel=3)
            return None, 0, c_out
        _check_output(out, tuple(x.shape))
        c_out = int(out.shape[1])
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        del out, x
    itemsize = torch.empty((), dtype=dtype).element_size()
    io_bytes = (in_channels + c_out) * math.prod(window) * itemsize
    per_window = max(peaks[1] - peaks[0], io_bytes)
    fixed = max(peaks[0] - per_window, 0)
    return per_window, fixed, c_out


def _confirm_cuda(model, in_channels, window, dev, dtype, n: int) -> int:
    while n > 1:
        try:
            x = torch.zeros((n, in_channels, *window), dtype=dtype, device=dev)
            with torch.no_grad():
                model(x)
            return n
        except Exception as e:
            if not _is_oom(e):
                raise
        x = None
        torch.cuda.empty_cache()
        n //= 2
    return 1


# ---------------------------------------------------------------------------------------
# out-of-memory backoff
# ---------------------------------------------------------------------------------------

_OOM_TEXT = ("out of memory", "can't allocate memory")
_REMEMBERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REMEMBERED_BY_ID: dict[int, int] = {}  # models that cannot be weakly referenced
_REMEMBER_LOCK = threading.Lock()


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(t in str(error).lower() for t in _OOM_TEXT)


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
                if not _is_oom(e):
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
