"""What a bioimage.io package holds, as plain data: where its files are, what its tensors
look like, and which weights it offers. Nothing here imports ``bioimageio.spec`` (the
optional extra): :mod:`.reading` fills these classes in, everything else reads them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ...core.processing import Processing
from ..spec import ModelLoadError, ModelSpec

#: the names a package's description goes by (the spec's, newest first)
DESCRIPTION_NAMES = ("bioimageio.yaml", "rdf.yaml")
WEIGHT_FORMATS = ("torchscript", "pytorch_state_dict")


def description_in(names) -> str | None:
    """The description among a folder's or a zip's top-level ``names``, if there is one."""
    names = list(names)
    for wanted in DESCRIPTION_NAMES:
        if wanted in names:
            return wanted
    found = sorted(n for n in names if n.endswith(".bioimageio.yaml"))
    return found[0] if found else None


def locate(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(root, description file name)`` of the package at ``path`` (a folder, a ``.zip``
    or the ``.yaml`` itself), or None when ``path`` is not a package. Reads no more than the
    folder listing or the zip directory."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        name = description_in(os.listdir(path))
        return (path, name) if name else None
    if not os.path.isfile(path):
        return None
    if path.endswith((".yaml", ".yml")):
        return os.path.dirname(path), os.path.basename(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            name = description_in(n for n in zf.namelist() if "/" not in n.rstrip("/"))
        return (path, name) if name else None
    return None


def is_package(path: str | os.PathLike) -> bool:
    """True for a bioimage.io package: a folder or ``.zip`` holding ``rdf.yaml`` (or
    ``bioimageio.yaml``), or such a description file."""
    try:
        return locate(path) is not None
    except OSError:
        return False


class PackageFiles:
    """The files of one package, read from its folder or its zip, by their relative names.

    A name that leaves the package (``../x``, an absolute path, a URL) is refused: a
    package is run from what it holds, and nothing is downloaded.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.zipped = os.path.isfile(root)

    def _name(self, name: str) -> str:
        text = str(name)
        if "://" in text:
            raise ModelLoadError(
                f"the package refers to {text}, which is not inside it; napari-qlty runs local "
                "packages only and downloads nothing: download the whole package (the .zip) first"
            )
        clean = posixpath.normpath(text.replace("\\", "/"))
        if clean.startswith(("../", "/")) or clean == ".." or os.path.isabs(text):
            raise ModelLoadError(f"the package names the file {text!r}, which lies outside the package")
        return clean

    def read(self, name: str) -> bytes:
        clean = self._name(name)
        try:
            if self.zipped:
                with zipfile.ZipFile(self.root) as zf:
                    return zf.read(clean)
            return Path(self.root, clean).read_bytes()
        except (KeyError, OSError, ValueError):
            raise ModelLoadError(f"the package {self.root} does not hold the file {clean!r} it names") from None

    def checked(self, name: str, sha256: str | None) -> bytes:
        """The file's bytes, after checking them against the sha256 the description gives."""
        data = self.read(name)
        if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise ModelLoadError(
                f"{name} in {self.root} does not match the sha256 its description gives: the file "
                "changed after the package was made"
            )
        return data


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor as the description declares it.

    ``axes``: the ids in the model's order (``"batch"``, ``"channel"``, ``"z"``, ...);
    ``space``: the spatial ids in napari-qlty's order (z before y before x);
    ``sizes``: per spatial id ``(minimum, step)`` (step 0: the size is fixed);
    ``halo``: per spatial id, what the consumer crops from each side of the output;
    ``dtype``: the data type the tensor is given in (input) or returned in (output);
    ``model_dtype``: the type the network itself takes (after preprocessing).
    """

    id: str
    axes: tuple[str, ...]
    space: tuple[str, ...]
    channels: int | None
    channel_names: tuple[str, ...] = ()
    sizes: tuple[tuple[str, tuple[int, int]], ...] = ()
    halo: tuple[tuple[str, int], ...] = ()
    dtype: str = "float32"
    model_dtype: str = "float32"
    batch: str = "any"  # "any", "one" (size 1) or "none" (no batch axis)
    processing: Processing = field(default_factory=Processing)
    test_tensor: str | None = None
    test_sha256: str | None = None

    def size_of(self, axis: str) -> tuple[int, int]:
        return dict(self.sizes)[axis]

    def halo_of(self, axis: str) -> int:
        return dict(self.halo).get(axis, 0)


@dataclass(frozen=True)
class WeightsEntry:
    """One weights format of the package: the file, and for a state dict the architecture."""

    format: str
    source: str
    sha256: str | None = None
    architecture: str | None = None  # the Python file inside the package
    architecture_sha256: str | None = None
    callable: str | None = None
    kwargs: tuple[tuple[str, object], ...] = ()
    library: str | None = None  # an architecture imported from an installed library (refused)
    strict: bool = True


@dataclass(frozen=True)
class Tolerance:
    """How close a reproduced test output must be (the package's, else bioimage.io's default)."""

    relative: float = 1e-3
    absolute: float = 1e-3
    mismatched_per_million: float = 100.0


@dataclass(frozen=True)
class Package:
    """A validated bioimage.io model package, ready to run (see :func:`.reading.read_package`)."""

    location: str
    root: str
    description_file: str
    name: str
    format_version: str
    input: TensorInfo
    output: TensorInfo
    weights: tuple[WeightsEntry, ...]
    tolerance: Tolerance = Tolerance()
    description: str = ""
    preferred_window: tuple[tuple[str, int], ...] = ()

    @property
    def files(self) -> PackageFiles:
        return PackageFiles(self.root)

    def weights_entry(self, fmt: str) -> WeightsEntry | None:
        return next((w for w in self.weights if w.format == fmt), None)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.output.channel_names


@dataclass(frozen=True)
class PackageSpec(ModelSpec):
    """A bioimage.io package to run, and what its user chose: picklable, so every dask worker
    loads the same model.

    ``weights``: ``"torchscript"``, ``"pytorch_state_dict"`` or None (TorchScript when the
    package has it, else the state dict). ``accept_code``: a state dict is built by
    running the Python file the package holds; that happens only when this is True, or the
    sha256 of that file as the user saw it (then a file changed since is refused).
    """

    weights: str | None = None
    accept_code: bool | str = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factory is not None:
            raise ValueError("a bioimage.io package builds its own network: it takes no factory")
        if self.weights is not None and self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)} or None, got {self.weights!r}")

    def __hash__(self) -> int:
        return hash((self.path, self.weights, self.accept_code))

    def fingerprint(self) -> str:
        return package_fingerprint(self.path, self.weights)

    def __str__(self) -> str:
        return self.path


def package_fingerprint(path: str, weights: str | None = None) -> str:
    """sha256 over the package's description and every file of the package it names
    (weights, architecture, test tensors, ...): the same package gives the same
    fingerprint wherever it lives, and a changed byte in any of them another."""
    import yaml

    found = locate(path)
    if found is None:
        raise ModelLoadError(f"{path} is not a bioimage.io package (no rdf.yaml or bioimageio.yaml)")
    root, name = found
    files = PackageFiles(root)
    text = files.read(name)
    h = hashlib.sha256(b"napari-qlty bioimage.io package v1\0")
    h.update(text)
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:
        content = None
    for named in sorted(_strings(content)):
        try:
            data = files.read(named)
        except ModelLoadError:
            continue  # not a file of the package (a name, a URL, a text)
        h.update(b"\0" + named.encode() + b"\0" + hashlib.sha256(data).digest())
    h.update(b"\0weights\0" + str(weights).encode())
    return h.hexdigest()


def _strings(value) -> set[str]:
    """Every string in a description that could name a file (``arch.py:Net`` included)."""
    if isinstance(value, str):
        if len(value) > 400 or "\n" in value:
            return set()
        return {value, value.rsplit(":", 1)[0]} if ":" in value else {value}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()
