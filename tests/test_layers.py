"""The house rules, read from the source: arrows point down, Qt stays at the edge."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import napari_qlty

ROOT = Path(napari_qlty.__file__).parent

#: what each layer may import from the package (besides itself)
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "models": {"core", "io"},
    "run": {"core", "io", "models"},
    "train": {"core", "io", "models"},
    "compat": {"core", "io", "run"},
    "data": set(),
    "demo": {"core", "io", "models", "run", "train", "data", ""},
    "cli": {"core", "io", "models", "run"},
    "_napari": {"core", "io", "models", "run", "train", "data"},
}
GUI = {"napari", "magicgui", "npe2", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt", "psygnal"}
QT = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6"}


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield path, parts


def imports(path: Path, parts: tuple[str, ...]):
    """(package-relative target, or None for a third-party module; top-level name)."""
    is_package = path.name == "__init__.py"
    package = list(parts if is_package else parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                yield (alias.name.split(".")[1:] if top == "napari_qlty" else None), top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if not node.module:  # from . import x: x may be a module
                    for alias in node.names:
                        yield target + [alias.name], "napari_qlty"
                    continue
                yield target, "napari_qlty"
            else:
                top = (node.module or "").split(".")[0]
                yield (node.module.split(".")[1:] if top == "napari_qlty" else None), top


def layer_of(parts) -> str:
    return parts[0] if parts else ""


def test_arrows_point_down():
    bad = []
    for path, parts in modules():
        layer = layer_of(parts)
        if layer in ("", "napari"):  # the package's own face re-exports from below
            continue
        allowed = ALLOWED[layer] | {layer}
        for target, _top in imports(path, parts):
            if target is None:
                continue
            other = layer_of(target)
            if other in ALLOWED and other not in allowed:
                bad.append(f"{'/'.join(parts)} imports {'.'.join(target)}")
            if other == "" and target == [] and layer != "demo":
                bad.append(f"{'/'.join(parts)} imports the package's face")
    assert not bad, bad


def test_gui_only_in_the_plugin_and_qt_only_under_qt():
    bad = []
    for path, parts in modules():
        for _target, top in imports(path, parts):
            if top in GUI and layer_of(parts) != "_napari":
                bad.append(f"{'/'.join(parts)} imports {top}")
            if top in QT and parts[:2] != ("_napari", "_qt"):
                bad.append(f"{'/'.join(parts)} imports {top} outside _napari/_qt")
        if layer_of(parts) == "_napari" and parts[:2] != ("_napari", "_qt"):
            if ".native" in path.read_text():
                bad.append(f"{'/'.join(parts)} reaches into Qt widgets (.native)")
    assert not bad, bad


def test_no_module_shares_its_name_with_an_exported_function():
    for name in napari_qlty.__all__:
        obj = getattr(napari_qlty, name)
        if inspect.isfunction(obj):
            clash = [p for p in ROOT.rglob(f"{name}.py")] + [p for p in ROOT.rglob(name) if p.is_dir()]
            assert not clash, f"{name} is exported as a function and names {clash}"
