"""torch.export archives checked before torch reads them: torch's own loader is not
hardened against hostile files."""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import os
import re
import zipfile

import torch

from .spec import ModelLoadError, archive_entries

_SYMPY_NAMES = frozenset(
    # torch.utils._sympy.functions, as the torch.export deserialiser names them
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv "
    "LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal "
    "ToFloat Identity OpaqueUnaryFn_sqrt Min Max BitwiseFn_bitwise_and BitwiseFn_bitwise_or "
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
        entries = archive_entries(zf)
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
