"""What a model file is: a picklable :class:`ModelSpec`, its fingerprint, and its kind read
from the zip directory (never by unpickling)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

PICKLED_MODEL_MESSAGE = (
    "this file holds a pickled model object; napari-qlty never unpickles code: save a "
    "TorchScript (torch.jit.script/trace + save), a torch.export program, or a state dict "
    "plus a factory"
)


KIND_LABELS = {
    "torchscript": "TorchScript",
    "export": "torch.export program",
    "state_dict": "state dict",
    "bioimageio": "bioimage.io package",
}


_FACTORY_RE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


class ModelLoadError(ValueError):
    """A model file that cannot (or must not) be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Picklable description of a model file (and, for a state dict, the code that builds it).

    ``path`` is made absolute (workers may run elsewhere in the file system tree).
    ``factory`` is ``"package.module:function"``; ``factory_kwargs`` its keyword arguments
    as ``((name, value), ...)`` (a dict is accepted and sorted). Values should be plain
    (JSON-like) data: they travel to every worker and into the fingerprint.
    ``factory_from_file`` marks a factory that a file named rather than the user: it is
    built only if trusted (see :mod:`~napari_qlty.models.factories`).
    """

    path: str
    factory: str | None = None
    factory_kwargs: tuple[tuple[str, object], ...] = ()
    factory_from_file: bool = False

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
        return hash((self.path, self.factory, repr(self.factory_kwargs), self.factory_from_file))

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
        another factory or other kwargs give another. A bioimage.io package is known by its
        description and the files it names.
        """
        if self.factory is None and self.kind() == "bioimageio":
            from .bioimageio.package import package_fingerprint

            return package_fingerprint(self.path, getattr(self, "weights", None))
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


def archive_entries(zf: zipfile.ZipFile) -> dict[str, str]:
    """``{name below the archive's root folder: full name}``; torch writes one root folder."""
    out = {}
    for name in zf.namelist():
        root, sep, rest = name.partition("/")
        out[rest if sep else name] = name
    return out


def model_kind(path: str | os.PathLike) -> str:
    """What a model file holds: ``"torchscript"``, ``"export"``, ``"state_dict"`` or
    ``"bioimageio"`` (a bioimage.io package: a folder or zip with ``rdf.yaml``, or the
    ``rdf.yaml`` itself).

    Decided from the zip directory (never by unpickling). A file that is not a zip is
    taken for a legacy ``torch.save`` file, which ``torch.load(weights_only=True)`` judges.
    """
    from .bioimageio.package import is_package

    path = os.fspath(path)
    if os.path.isdir(path) and is_package(path):
        return "bioimageio"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if path.endswith((".yaml", ".yml")):
        return "bioimageio"
    if not zipfile.is_zipfile(path):
        return "state_dict"
    with zipfile.ZipFile(path) as zf:
        entries = archive_entries(zf)
        if any(name.endswith((".yaml", ".yml")) for name in zf.namelist()) and is_package(path):
            return "bioimageio"
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
