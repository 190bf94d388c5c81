"""What napari-qlty writes, and how to tell that a path holds it.

Every store we write records ``{"format": <id>, ...}`` under the attribute
:data:`ATTRS_KEY`; :func:`identify` reads it back without loading any data. A path
that :func:`identify` does not recognise was not made by us, and nothing here or
elsewhere in the package deletes or replaces it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from zarr.codecs import BloscCodec

ATTRS_KEY = "napari_qlty"
"""The zarr attribute (and checkpoint JSON key space) holding our metadata."""

PREDICTION = "napari-qlty/prediction/2"
"""An OME-Zarr 0.5 image with its pyramid, labels and our bookkeeping (io/prediction.py)."""
PREDICTION_FLAT = "napari-qlty/prediction/1"
"""The earlier layout: flat ``probabilities``, ``labels`` and ``progress`` arrays, no NGFF."""
PAIRS = "napari-qlty/training-pairs/1"
LABELS = "napari-qlty/labels/1"
CHECKPOINT = "napari-qlty/checkpoint/1"
PACKAGE = "napari-qlty/bioimageio-package/1"
ROUNDS = "napari-qlty/rounds/1"
ROUND = "napari-qlty/round/1"

DESCRIPTIONS = {
    PREDICTION: "a napari-qlty prediction",
    PREDICTION_FLAT: "a napari-qlty prediction in the earlier flat layout (napari-qlty/prediction/1)",
    PAIRS: "a napari-qlty training-pairs export",
    LABELS: "a napari-qlty sparse-labels store",
    CHECKPOINT: "a napari-qlty model checkpoint",
    PACKAGE: "a bioimage.io package exported by napari-qlty",
    ROUNDS: "the training rounds of a napari-qlty loop",
    ROUND: "a napari-qlty training round",
}

#: older formats of ours a new store may replace (with ``overwrite``); never resumed or misread
REPLACES = {PREDICTION: (PREDICTION_FLAT,)}

#: cheap lossless compression for everything we write (encodes at about 3 GB/s)
FAST_CODEC = BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")


class StoreError(ValueError):
    """A path cannot be used as asked (it holds other data, or other parameters).

    ``remedy`` says what the user could allow to go on: ``"overwrite"`` (replace a store
    of ours) or None (nothing: the path holds what we must not touch). Each interface
    words it its own way (a flag, a check box).
    """

    def __init__(self, message: str, remedy: str | None = None) -> None:
        super().__init__(message)
        self.remedy = remedy


def canonical(params: dict) -> dict:
    """Parameters as they round-trip through JSON (tuples become lists)."""
    return json.loads(json.dumps(params, sort_keys=True, default=jsonable))


def jsonable(value):
    """numpy scalars and arrays, and tuples, as JSON understands them."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {value!r}")


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``"key: stored X, now Y"`` for every leaf where two parameter dicts differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: stored {va!r}, now {vb!r}")
    return out


def read_attrs(path: str | os.PathLike) -> dict | None:
    """Our metadata at a zarr path (group or array), or None if there is none."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # not zarr, or unreadable: certainly not ours
        return None
    meta = node.attrs.get(ATTRS_KEY)
    return dict(meta) if isinstance(meta, dict) else None


def identify(path: str | os.PathLike) -> str | None:
    """The format id of what we wrote at ``path``, or None if it is not ours."""
    meta = read_attrs(path) or package_marker(path)
    fmt = meta.get("format") if meta else None
    return fmt if fmt in DESCRIPTIONS else None


def package_marker(path: str | os.PathLike) -> dict | None:
    """Our metadata in a bioimage.io package (its description's ``config.napari_qlty``: a
    folder or a zip holding ``rdf.yaml``), or None."""
    import zipfile

    import yaml

    p = Path(path)
    try:
        if p.is_dir():
            text = (p / "rdf.yaml").read_bytes() if (p / "rdf.yaml").is_file() else None
        elif p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                text = zf.read("rdf.yaml") if "rdf.yaml" in zf.namelist() else None
        else:
            text = None
        content = yaml.safe_load(text) if text else None
    except (OSError, zipfile.BadZipFile, yaml.YAMLError):
        return None
    meta = ((content or {}).get("config") or {}).get(ATTRS_KEY) if isinstance(content, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def read_meta(path: str | os.PathLike, fmt: str) -> dict | None:
    """Our metadata at ``path`` if it holds format ``fmt``, else None."""
    meta = read_attrs(path)
    return meta if meta is not None and meta.get("format") == fmt else None


def describe(path: str | os.PathLike) -> str:
    """What is at ``path``, in words, for messages that refuse to touch it."""
    p = Path(path)
    if not p.exists():
        return "nothing"
    fmt = identify(p)
    if fmt is not None:
        return DESCRIPTIONS[fmt]
    if p.is_file():
        return f"a file of {p.stat().st_size:,} bytes"
    entries = sorted(e.name for e in p.iterdir())
    if not entries:
        return "an empty folder"
    shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
    return f"a folder with {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({shown})"


def is_empty_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and not any(p.iterdir())


def check_replaceable(path: str | os.PathLike, fmt: str, *, overwrite: bool) -> bool:
    """May a new ``fmt`` store be written at ``path``? Returns True if something must be
    removed first (our own store, or an empty folder), False if nothing is there.

    Raises :class:`StoreError` when ``path`` holds anything we did not write (never
    replaced, whatever is asked), or a store of ours while ``overwrite`` is off.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return False
    if is_empty_folder(p):
        return True
    found = identify(p)
    if found is None:
        raise StoreError(
            f"{p} holds {describe(p)}, which napari-qlty did not write; it is left untouched: "
            "choose another path"
        )
    if found in REPLACES.get(fmt, ()):
        if not overwrite:
            raise StoreError(
                f"{p} holds {DESCRIPTIONS[found]}, which this version neither resumes nor reads as "
                f"{DESCRIPTIONS[fmt]}; it is left untouched: choose another path", remedy="overwrite",
            )
        return True
    if found != fmt:
        raise StoreError(
            f"{p} holds {DESCRIPTIONS[found]}, not {DESCRIPTIONS[fmt]}; it is left untouched: "
            "choose another path"
        )
    if not overwrite:
        raise StoreError(f"{p} already holds {DESCRIPTIONS[fmt]}; it is left untouched", remedy="overwrite")
    return True


def remove_ours(path: str | os.PathLike, fmt: str) -> None:
    """Delete ``path`` if it is a ``fmt`` store of ours or an empty folder; else refuse."""
    import shutil

    p = Path(path)
    if is_empty_folder(p):
        p.rmdir()
        return
    if identify(p) not in (fmt, *REPLACES.get(fmt, ())):
        raise StoreError(f"{p} holds {describe(p)}; napari-qlty deletes only what it wrote there")
    if p.is_file():
        p.unlink()
    else:
        shutil.rmtree(p)
