"""zarr arrays and groups (v2 and v3, local or behind a URL), OME multiscales included."""

from __future__ import annotations

import os

import numpy as np

from .axes import AXIS_LETTERS, resolve_axes, spatial_values
from .base import NumpyReader, Opener, Source, digest, file_stamp
from .ome import ome_axes, ome_dataset_transform, ome_multiscale


class _ZarrOpener(Opener):
    """A zarr array at ``array_path`` inside the store at ``location`` (a dir or a URL)."""

    def __init__(self, location: str, array_path: str | None, storage_options: dict | None = None):
        self.location = location
        self.array_path = array_path or None
        self.storage_options = storage_options

    kind = "zarr"

    def open(self):
        return NumpyReader(
            _open_zarr_array(self.location, self.array_path, self.storage_options)
        ), None


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _zarr_store(location: str, storage_options: dict | None):
    import zarr.storage

    if is_url(location):
        try:
            return zarr.storage.FsspecStore.from_url(
                location, storage_options=storage_options, read_only=True
            )
        except ImportError as e:
            raise ImportError(
                f"reading {location} needs fsspec (and aiohttp for http(s)://, s3fs for s3://): {e}"
            ) from e
    location = location.removeprefix("file://")
    return zarr.storage.LocalStore(location, read_only=True)


def _open_zarr_node(location: str, path: str | None, storage_options: dict | None):
    import zarr

    return zarr.open(store=_zarr_store(location, storage_options), path=path or "", mode="r")


def _open_zarr_array(location: str, path: str | None, storage_options: dict | None):
    import zarr

    return zarr.open_array(store=_zarr_store(location, storage_options), path=path or "", mode="r")


def looks_like_zarr_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zarray", ".zgroup")
    )


def array_chunks(arr) -> tuple[int, ...] | None:
    try:
        return tuple(int(c) for c in arr.chunks)
    except Exception:  # irregular chunks, or none
        return None


def _metadata_stamp(location: str, array_path: str | None):
    """mtime and size of a local array's metadata file (None for URLs)."""
    if is_url(location):
        return None
    base = os.path.join(location, array_path) if array_path else location
    for name in ("zarr.json", ".zarray"):
        f = os.path.join(base, name)
        if os.path.exists(f):
            return file_stamp(f)
    return None


def open_zarr_location(location: str, *, axes, level, array, storage_options) -> Source:
    try:
        node = _open_zarr_node(location, array, storage_options)
    except (FileNotFoundError, KeyError) as e:
        what = f"array {array!r} in " if array else ""
        raise FileNotFoundError(f"no zarr {what}store found at {location} ({e})") from e
    return _from_zarr_node(
        node,
        location,
        array or "",
        axes=axes,
        level=level,
        make_opener=lambda p: _ZarrOpener(location, p, storage_options),
        stamp=lambda p: _metadata_stamp(location, p),
        parent=lambda p: _parent_multiscale(location, p, storage_options),
    )


def open_zarr_object(obj, *, axes, level, array) -> Source:
    import zarr
    import zarr.storage

    if array is not None:
        if not isinstance(obj, zarr.Group):
            raise ValueError(f"array={array!r} applies to zarr groups, not to a zarr array")
        node = obj[array]
    else:
        node = obj
    store = node.store
    node_path = node.path or ""
    root = None
    if isinstance(store, zarr.storage.LocalStore):
        root = os.path.abspath(str(store.root))
    if root is not None:  # a directory: reopen it by its path
        return _from_zarr_node(
            node,
            root,
            node_path,
            axes=axes,
            level=level,
            make_opener=lambda p: _ZarrOpener(root, p, None),
            stamp=lambda p: _metadata_stamp(root, p),
            parent=lambda p: _parent_multiscale(root, p, None),
        )
    # any other store (remote fsspec, memory, zip, a wrapper): the opener pickles the store
    # object itself, which for fsspec is its URL and options, for a memory store its data
    name = (
        str(store) if isinstance(store, zarr.storage.FsspecStore) else f"<{type(store).__name__}>"
    )
    return _from_zarr_node(
        node,
        name,
        node_path,
        axes=axes,
        level=level,
        make_opener=lambda p: _ZarrStoreOpener(store, p, name),
        stamp=lambda p: str(store),
        parent=lambda p: _parent_multiscale_in(lambda: zarr.open_group(store=store, mode="r"), p),
    )


class _ZarrStoreOpener(Opener):
    """A zarr array in a store object that is not a local directory (pickled as is)."""

    kind = "zarr"

    def __init__(self, store, array_path: str, name: str):
        self.store = store
        self.array_path = array_path
        self.location = name

    def open(self):
        import zarr

        return NumpyReader(zarr.open_array(store=self.store, path=self.array_path, mode="r")), None


def _from_zarr_node(
    node, location: str, node_path: str, *, axes, level, make_opener, stamp, parent
) -> Source:
    """A Source for a zarr array, or the chosen array of a group, at ``node_path``."""
    import zarr

    ms = ms_index = None
    if isinstance(node, zarr.Group):
        ms = ome_multiscale(dict(node.attrs))
        if ms is not None:
            datasets = ms.get("datasets") or []
            paths = [d.get("path") for d in datasets]
            lv = 0 if level is None else level
            if not -len(datasets) <= lv < len(datasets):
                raise ValueError(
                    f"level={level} is out of range for {location}: its multiscales have "
                    f"{len(datasets)} level(s) (paths {paths}); valid are 0..{len(datasets) - 1} "
                    f"(0 the finest), or negative counting from the coarsest"
                )
            ms_index = lv % len(datasets)
            sub = paths[ms_index]
        else:
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) != 1:
                raise ValueError(
                    f"{location} is a zarr group without OME multiscales metadata; name the "
                    f"array with array=, one of {arrays}"
                    if arrays
                    else f"{location} is a zarr group with no arrays and no OME multiscales"
                )
            if level not in (0, None):
                raise ValueError(f"level={level!r} applies to OME multiscales; {location} has none")
            sub = arrays[0]
        arr = node[sub]
        if not isinstance(arr, zarr.Array):
            raise ValueError(f"{sub!r} in {location} is a group, not an array")
        array_path = "/".join(p for p in (node_path, sub) if p)
    else:
        arr, array_path = node, node_path
        if level not in (0, None):
            raise ValueError(
                f"level={level!r} applies to multiscale groups; {location}"
                f"{' [' + array_path + ']' if array_path else ''} is a single array "
                "(open its group)"
            )
        ms, ms_index = parent(array_path)  # an array inside an OME group: use its metadata
    shape = tuple(int(s) for s in arr.shape)
    meta_axes = units = scale = trans = None
    if ms is not None:
        meta_axes, units = ome_axes(ms, len(shape))
        scale, trans = ome_dataset_transform(ms, ms_index, len(shape))
    if meta_axes is None:
        meta_axes = _dimension_names_axes(arr)
    stored_axes, guessed = resolve_axes(axes, meta_axes, shape)
    spacing = spatial_values(None if scale is None else scale.tolist(), stored_axes)
    offset = spatial_values(None if trans is None else trans.tolist(), stored_axes)
    units = spatial_values(units, stored_axes)
    if units is not None and not any(units):
        units = None
    dtype = np.dtype(arr.dtype)
    kind = f"zarr v{arr.metadata.zarr_format}"
    if ms is not None:
        kind += f" OME {ms.get('version', '?')}"
    opener = make_opener(array_path)
    chunks = array_chunks(arr)
    fp = digest("zarr", location, array_path, shape, str(dtype), chunks, stamp(array_path))
    extra = []
    if ms is not None:
        extra.append(f"level {ms_index}/{len(ms.get('datasets') or [])}")
    shards = getattr(arr, "shards", None)
    if shards:
        extra.append(f"shards {tuple(shards)}")
    return Source(
        opener,
        stored_shape=shape,
        dtype=dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        spacing=spacing,
        offset=offset,
        units=units,
        stored_chunks=chunks,
        fingerprint=fp,
        kind=kind,
        extra=" ".join(extra),
        location=location + (f" [{array_path}]" if array_path else ""),
        reader=NumpyReader(arr),
    )


def _dimension_names_axes(arr) -> str | None:
    """Axes from zarr v3 ``dimension_names`` or xarray's ``_ARRAY_DIMENSIONS``, if understood."""
    try:
        names = getattr(arr.metadata, "dimension_names", None) or dict(arr.attrs).get(
            "_ARRAY_DIMENSIONS"
        )
    except Exception:  # pragma: no cover - unusual metadata
        return None
    if not names or any(not isinstance(n, str) for n in names):
        return None
    letters = "".join(n.lower() for n in names)
    if len(letters) != len(names) or any(a not in AXIS_LETTERS for a in letters):
        return None
    if len(set(letters)) != len(letters):
        return None
    return letters


def _parent_multiscale_in(root_group, array_path: str):
    """The OME multiscales entry, and level, of the group that holds ``array_path``
    (``root_group``: the store's root group, or a function returning it)."""
    import zarr

    if not array_path:
        return None, None
    try:
        if callable(root_group):
            root_group = root_group()
        parent_path, _, name = array_path.rpartition("/")
        parent = root_group[parent_path] if parent_path else root_group
        if not isinstance(parent, zarr.Group):
            return None, None
        ms = ome_multiscale(dict(parent.attrs))
        paths = [d.get("path") for d in (ms or {}).get("datasets") or []]
        if name in paths:
            return ms, paths.index(name)
    except Exception:
        pass
    return None, None


def _parent_multiscale(location: str, array_path: str, storage_options):
    """Like :func:`_parent_multiscale_in` for a store given by location; also looks one
    directory up when the location itself is an array (``image.zarr/0``)."""
    try:
        if array_path:
            return _parent_multiscale_in(
                lambda: _open_zarr_node(location, "", storage_options), array_path
            )
        parent_loc, _, name = location.rstrip("/").rpartition("/")
        if not parent_loc or (not is_url(location) and not looks_like_zarr_dir(parent_loc)):
            return None, None
        if is_url(location) and "://" not in parent_loc:
            return None, None
        import zarr

        parent = _open_zarr_node(parent_loc, "", storage_options)
        if isinstance(parent, zarr.Group):
            return _parent_multiscale_in(parent, name)
    except Exception:
        pass
    return None, None
