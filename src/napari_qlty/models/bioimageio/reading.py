"""Reading and validating a bioimage.io model package with ``bioimageio.spec``, offline.

The description (format 0.4 or 0.5) is validated and converted to the newest format by
``bioimageio.spec`` with its file and URL checks switched off (``perform_io_checks``:
no download, no request to GitHub or a DOI resolver), and nothing is unpickled or
imported. The files napari-qlty reads later (weights, architecture, test tensors) are
checked against the sha256 the description gives when they are read
(:meth:`~.package.PackageFiles.checked`). What napari-qlty cannot run faithfully (several
inputs, outputs of another size, a custom or stardist postprocessing, output statistics)
is refused here, with the reason.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ...core.processing import Processing, Step
from ..spec import ModelLoadError
from .package import Package, PackageFiles, TensorInfo, Tolerance, WeightsEntry, locate

INSTALL_HINT = 'bioimage.io packages need the extra: pip install "napari-qlty[bioimageio]"'
SPACE_ORDER = "tzyx"


def bioimageio_spec():
    """The ``bioimageio.spec`` module, or a clear error naming the extra to install."""
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise ModelLoadError(INSTALL_HINT) from None
    return spec


def read_package(path: str | os.PathLike) -> Package:
    """The validated package at ``path`` (a folder, a ``.zip`` or its ``rdf.yaml``).

    Read once per process and file state (the description's size and modification time).
    ModelLoadError says what is wrong, in the description's own field names.
    """
    path = os.path.abspath(os.fspath(path))
    found = locate(path)
    if found is None:
        raise ModelLoadError(f"{path} is not a bioimage.io package: no rdf.yaml or bioimageio.yaml in it")
    root, name = found
    described = os.path.join(root, name) if os.path.isdir(root) else root
    st = os.stat(described)
    return _read(path, root, name, described, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _read(path: str, root: str, name: str, described: str, _mtime: int, _size: int) -> Package:
    descr = validated(described)
    return _package(descr, path, root, name, _written_version(root, name))


def _written_version(root: str, name: str) -> str:
    """The format version the description was written in (validation converts it to the newest)."""
    import yaml

    try:
        content = yaml.safe_load(PackageFiles(root).read(name))
    except (ModelLoadError, yaml.YAMLError):
        return ""
    return str(content.get("format_version", "")) if isinstance(content, dict) else ""


def validated(source: str):
    """The description at ``source``, validated and converted to the newest format, offline."""
    bioimageio_spec()  # a clear error when the extra is missing
    from bioimageio.spec import InvalidDescr, ValidationContext, load_description

    with ValidationContext(perform_io_checks=False, log_warnings=False, disable_cache=True):
        descr = load_description(source, format_version="latest")
    if isinstance(descr, InvalidDescr):
        raise ModelLoadError(f"{source} is not a valid bioimage.io description: {problems(descr)}")
    if getattr(descr, "type", None) != "model":
        raise ModelLoadError(f"{source} describes a bioimage.io {getattr(descr, 'type', '?')}, not a model")
    return descr


def problems(descr, limit: int = 4) -> str:
    """The validation errors of an invalid description, one line each (the first few)."""
    lines = []
    summary = getattr(descr, "validation_summary", None)
    for detail in getattr(summary, "details", None) or ():
        for error in detail.errors:
            where = ".".join(map(str, error.loc)) or "description"
            lines.append(f"{where}: {error.msg}")
    if not lines:
        return "bioimageio.spec did not say why"
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


# -- the description as plain data -------------------------------------------------------------
def _package(descr, path: str, root: str, name: str, written: str) -> Package:
    inputs = [t for t in descr.inputs if not getattr(t, "optional", False)]
    if len(inputs) != 1 or len(descr.outputs) != 1:
        raise ModelLoadError(
            f"napari-qlty runs models with one input and one output; {descr.name!r} has "
            f"{len(inputs)} input(s) ({', '.join(str(t.id) for t in inputs)}) and {len(descr.outputs)} "
            f"output(s) ({', '.join(str(t.id) for t in descr.outputs)})"
        )
    tensor_in, tensor_out = inputs[0], descr.outputs[0]
    info_in = _tensor(tensor_in, "input", str(tensor_in.id))
    info_out = _tensor(tensor_out, "output", str(tensor_in.id), info_in)
    weights = _weights(descr)
    extra = dict(getattr(descr.config, "model_extra", None) or {})
    ours = extra.get("napari_qlty") or extra.get("napari-qlty") or {}
    window = ours.get("window") if isinstance(ours, dict) else None
    preferred = ()
    if isinstance(window, dict):
        preferred = tuple((str(k), int(v)) for k, v in window.items() if str(k) in info_in.space)
    return Package(
        location=path, root=root, description_file=name, name=str(descr.name),
        format_version=written or str(getattr(descr, "format_version", "")), input=info_in, output=info_out,
        weights=weights, tolerance=_tolerance(descr, str(tensor_out.id)),
        description=str(getattr(descr, "description", "") or ""), preferred_window=preferred,
    )


def _tensor(descr, stage: str, input_id: str, info_in: TensorInfo | None = None) -> TensorInfo:
    where = f"{stage} {descr.id!r}"
    axes, space, sizes, halo = [], [], [], []
    channels, names, batch = None, (), "none"
    for axis in descr.axes:
        kind, aid = axis.type, str(axis.id)
        axes.append(aid)
        if kind == "batch":
            batch = "one" if getattr(axis, "size", None) == 1 else "any"
        elif kind == "channel":
            names = tuple(str(n) for n in axis.channel_names)
            channels = len(names)
        elif kind == "space":
            space.append(aid)
            if stage == "input":
                sizes.append((aid, _input_size(axis.size, where, aid)))
            else:
                _check_output_size(axis, aid, input_id, info_in, where)
                halo.append((aid, int(getattr(axis, "halo", 0) or 0)))
        else:
            raise ModelLoadError(
                f"the {where} has a {kind} axis {aid!r}; napari-qlty tiles space axes (z, y, x) "
                "with batch and channel axes only"
            )
    if not space:
        raise ModelLoadError(f"the {where} has no space axis to tile")
    if info_in is not None and sorted(space) != sorted(info_in.space):
        raise ModelLoadError(
            f"the {where} has the space axes {', '.join(space)}, the input {', '.join(info_in.space)}: "
            "napari-qlty blends outputs with the input's axes"
        )
    ordered = tuple(sorted(space, key=SPACE_ORDER.index)) if all(a in SPACE_ORDER for a in space) else tuple(space)
    data = descr.data[0] if isinstance(descr.data, (list, tuple)) else descr.data
    dtype = str(data.type)
    steps = tuple(_step(p, descr, stage, input_id) for p in (
        descr.preprocessing if stage == "input" else descr.postprocessing))
    casts = [s.get("dtype") for s in steps if s.op == "ensure_dtype"]
    model_dtype = casts[-1] if stage == "input" and casts else dtype
    test = getattr(descr, "test_tensor", None)
    return TensorInfo(
        id=str(descr.id), axes=tuple(axes), space=ordered, channels=channels, channel_names=names,
        sizes=tuple(sizes), halo=tuple(halo), dtype=dtype, model_dtype=model_dtype, batch=batch,
        processing=_processing(steps, stage, where),
        test_tensor=None if test is None else str(test.source),
        test_sha256=None if test is None or test.sha256 is None else str(test.sha256),
    )


def _processing(steps, stage: str, where: str) -> Processing:
    try:
        return Processing(steps, stage)
    except ValueError as e:
        raise ModelLoadError(f"the {where}'s processing cannot run tiled: {e}") from None


def _input_size(size, where: str, axis: str) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, 0)
    if hasattr(size, "min") and hasattr(size, "step"):
        return (int(size.min), int(size.step))
    raise ModelLoadError(
        f"the {where}'s axis {axis!r} takes its size from another tensor ({size}); napari-qlty "
        "needs a fixed size or a minimum and a step"
    )


def _check_output_size(axis, aid: str, input_id: str, info_in: TensorInfo, where: str) -> None:
    size = axis.size
    if hasattr(size, "tensor_id"):
        same = str(size.tensor_id) == input_id and str(size.axis_id) == aid and int(size.offset) == 0
    else:
        same = isinstance(size, int) and dict(info_in.sizes).get(aid) == (size, 0)
    if not same:
        raise ModelLoadError(
            f"the {where}'s axis {aid!r} is not the size of the input's ({size}); napari-qlty blends "
            "outputs the size of their windows"
        )


def _channel_values(kwargs, where: str, op: str):
    axis = getattr(kwargs, "axis", None)
    if axis is not None and str(axis) != "channel":
        raise ModelLoadError(f"the {where}'s {op} takes values along the axis {axis!r}; napari-qlty takes "
                             "them per channel only")


def _per_channel(kwargs, descr, where: str, op: str) -> bool:
    """Statistics per channel (the reduced axes leave the channel out) or over all of them."""
    axes = getattr(kwargs, "axes", None)
    if axes is None:
        return False
    reduced = {str(a) for a in axes}
    space = {str(a.id) for a in descr.axes if a.type == "space"}
    if not space <= reduced:
        raise ModelLoadError(
            f"the {where}'s {op} measures statistics over {', '.join(sorted(reduced))} only; napari-qlty "
            "measures them over the whole volume (all space axes), never per slice or window"
        )
    return any(a.type == "channel" for a in descr.axes) and "channel" not in reduced


def _step(p, descr, stage: str, input_id: str) -> Step:
    op, kw, where = str(p.id), getattr(p, "kwargs", None), f"{stage} {descr.id!r}"
    if op == "ensure_dtype":
        return Step(op, {"dtype": str(kw.dtype)})
    if op == "scale_linear":
        _channel_values(kw, where, op)
        return Step(op, {"gain": kw.gain, "offset": kw.offset})
    if op == "scale_range":
        ref = getattr(kw, "reference_tensor", None)
        of_input = ref is not None and str(ref) == input_id  # the unprocessed input
        if ref is not None and str(ref) not in (input_id, str(descr.id)):
            raise ModelLoadError(f"the {where}'s scale_range refers to the tensor {ref!r}, which napari-qlty "
                                 "does not have")
        return Step(op, {"low": kw.min_percentile, "high": kw.max_percentile, "eps": kw.eps,
                         "of_input": True if of_input else None}, _per_channel(kw, descr, where, op))
    if op == "zero_mean_unit_variance":
        return Step(op, {"eps": kw.eps}, _per_channel(kw, descr, where, op))
    if op == "fixed_zero_mean_unit_variance":
        _channel_values(kw, where, op)
        return Step(op, {"mean": kw.mean, "std": kw.std})
    if op == "clip":
        measured = kw.min_percentile is not None or kw.max_percentile is not None
        return Step(op, {"min": kw.min, "max": kw.max, "low": kw.min_percentile, "high": kw.max_percentile},
                    _per_channel(kw, descr, where, op) if measured else False)
    if op == "binarize":
        _channel_values(kw, where, op)
        return Step(op, {"threshold": kw.threshold})
    if op == "sigmoid":
        return Step(op)
    if op == "softmax":
        if str(kw.axis) != "channel":
            raise ModelLoadError(f"the {where}'s softmax runs along {kw.axis!r}; napari-qlty takes it along "
                                 "channels only")
        return Step(op)
    raise ModelLoadError(
        f"the {where} declares the {op} {'pre' if stage == 'input' else 'post'}processing, which napari-qlty "
        "does not apply (it runs scale_range, zero_mean_unit_variance, fixed_zero_mean_unit_variance, "
        "scale_linear, clip, binarize, sigmoid, softmax and ensure_dtype)"
    )


def _weights(descr) -> tuple[WeightsEntry, ...]:
    entries = []
    w = descr.weights
    if w.torchscript is not None:
        entries.append(WeightsEntry("torchscript", str(w.torchscript.source), _sha(w.torchscript)))
    sd = w.pytorch_state_dict
    if sd is not None:
        arch = sd.architecture
        kwargs = tuple(sorted((str(k), v) for k, v in (arch.kwargs or {}).items()))
        if hasattr(arch, "import_from"):
            entries.append(WeightsEntry("pytorch_state_dict", str(sd.source), _sha(sd), callable=str(arch.callable),
                                        kwargs=kwargs, library=str(arch.import_from), strict=bool(sd.strict)))
        else:
            entries.append(WeightsEntry("pytorch_state_dict", str(sd.source), _sha(sd), architecture=str(arch.source),
                                        architecture_sha256=_sha(arch), callable=str(arch.callable), kwargs=kwargs,
                                        strict=bool(getattr(sd, "strict", True))))
    if not entries:
        present = [f for f in ("onnx", "keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle", "tensorflow_js")
                   if getattr(w, f, None) is not None]
        raise ModelLoadError(
            f"napari-qlty runs TorchScript or PyTorch state-dict weights; {descr.name!r} has only "
            f"{', '.join(present) or 'other'} weights"
        )
    return tuple(entries)


def _sha(entry) -> str | None:
    value = getattr(entry, "sha256", None)
    return None if value is None else str(value)


def _tolerance(descr, output_id: str) -> Tolerance:
    config = getattr(getattr(descr, "config", None), "bioimageio", None)
    for tol in getattr(config, "reproducibility_tolerance", None) or ():
        ids = [str(i) for i in tol.output_ids]
        if ids and output_id not in ids:
            continue
        formats = [str(f) for f in tol.weights_formats]
        if formats and not {"torchscript", "pytorch_state_dict"} & set(formats):
            continue
        return Tolerance(float(tol.relative_tolerance), float(tol.absolute_tolerance),
                         float(tol.mismatched_elements_per_million))
    return Tolerance()
