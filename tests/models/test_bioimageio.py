"""bioimage.io packages: a Zoo model run tiled over any volume, and ours exported as one.

Every package is built here, on the spot (tests/package_builders.py writes them as other
tools do: a state dict and the Python file of its architecture, TorchScript, formats 0.4
and 0.5); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from engine_testing import fast
from hypothesis import given
from hypothesis import strategies as st
from package_builders import REACH, apply_processing, build_package, network, package_tensors

from napari_qlty import Grid, Weighting, infer, predict
from napari_qlty.core.intensity import Normalisation
from napari_qlty.core.processing import Processing, Step, normalisation_as_steps
from napari_qlty.io.formats import StoreError
from napari_qlty.models import ModelLoadError, ModelSpec, load_model, model_kind
from napari_qlty.io.prediction import Prediction
from napari_qlty.models.bioimageio import (
    PackageSpec,
    export_package,
    is_package,
    load_package,
    package_grid,
    read_package,
)

DTYPES = ["uint8", "int8", "uint16", "int16", "float32"]


def tiled(model, x, package, **grid):
    g = package_grid(package, x.shape[2:], **grid)
    return infer(model, x, g, Weighting("border", 0.0)), g


# -- a Zoo model through our tiling ---------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["0.5", "0.4"])
@pytest.mark.parametrize("weights", ["torchscript", "pytorch_state_dict"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_packages_test_input_gives_its_test_output_through_our_tiling(tmp_path, fmt, weights, channels_last):
    pre = ({"op": "scale_range", "low": 1.0, "high": 99.8, "per_channel": True},) if fmt == "0.5" else \
        ({"op": "zero_mean_unit_variance", "per_channel": True},)
    post = ({"op": "softmax"},) if fmt == "0.5" else ({"op": "sigmoid"},)
    path = build_package(tmp_path, fmt=fmt, channels_last=channels_last, zipped=channels_last,
                         test_shape=(1, 2, 48, 40), preprocessing=pre, postprocessing=post)
    assert is_package(path) and model_kind(path) == "bioimageio"
    package = read_package(path)
    assert package.format_version.startswith(fmt) and package.input.space == ("y", "x")
    assert package.output.halo == (("y", REACH), ("x", REACH))
    x, y = package_tensors(path)
    if channels_last:
        x, y = np.moveaxis(x, -1, 1), np.moveaxis(y, -1, 1)
    model = load_package(path, weights=weights, accept_code=True)
    got, grid = tiled(model, x, package, window=16)  # many windows, each a size the model takes
    assert len(grid) > 1 and grid.border == (REACH, REACH) and grid.step == (8, 8)
    tol = package.tolerance
    np.testing.assert_allclose(got.numpy(), y, rtol=tol.relative, atol=tol.absolute)


def test_a_3d_package_and_a_2d_package_on_a_z_stack(tmp_path):
    path = build_package(tmp_path / "3d", dims=3, test_shape=(1, 1, 20, 24, 32), valid=(8, 4),
                         preprocessing=({"op": "zero_mean_unit_variance"},), postprocessing=())
    package = read_package(path)
    assert package.input.space == ("z", "y", "x")
    x, y = package_tensors(path)
    got, grid = tiled(load_package(path, accept_code=True), x, package, window=(8, 12, 12))
    assert len(grid) > 8
    np.testing.assert_allclose(got.numpy(), y, rtol=1e-4, atol=1e-4)

    flat = build_package(tmp_path / "2d", dims=2, test_shape=(1, 1, 48, 40), postprocessing=())
    flat_package = read_package(flat)
    model = load_package(flat)  # TorchScript: nothing of the package's Python runs
    stack = np.random.default_rng(3).random((1, 1, 5, 48, 40)).astype(np.float32) * 100
    got, grid = tiled(model, stack, flat_package, window=(2, 16, 16))
    assert grid.border == (0, REACH, REACH)
    for z in range(5):  # slice by slice, each with the statistics of the whole stack
        one = Processing(flat_package.input.processing.steps).fit(stack)
        with torch.no_grad():
            expected = model.net(one.apply(torch.from_numpy(stack[:, :, z].copy())))
        torch.testing.assert_close(got[:, :, z], expected, rtol=1e-5, atol=1e-5)


# -- processing with statistics of the whole volume ----------------------------------------------
OPS = st.sampled_from([
    [{"op": "scale_range", "low": 1.0, "high": 99.8}],
    [{"op": "scale_range", "low": 5.0, "high": 95.0, "per_channel": True}, {"op": "clip", "min": 0.0, "max": 1.0}],
    [{"op": "zero_mean_unit_variance", "per_channel": True}],
    [{"op": "scale_linear", "gain": 0.5, "offset": -3.0}, {"op": "zero_mean_unit_variance"}],
    [{"op": "scale_range", "low": 1.0, "high": 99.0}, {"op": "binarize", "threshold": 0.5}],
    [{"op": "scale_linear", "gain": 0.01, "offset": -1.0}, {"op": "sigmoid"}],
    [{"op": "fixed_zero_mean_unit_variance", "mean": 10.0, "std": 3.0}, {"op": "clip", "min": -2.0}],
])


def _steps(ops):
    known = {"scale_range": ("low", "high", "eps"), "zero_mean_unit_variance": ("eps",), "clip": ("min", "max"),
             "scale_linear": ("gain", "offset"), "binarize": ("threshold",), "sigmoid": (),
             "fixed_zero_mean_unit_variance": ("mean", "std")}
    return tuple(Step(o["op"], {k: o[k] for k in known[o["op"]] if k in o}, o.get("per_channel", False))
                 for o in ops)


@fast(40)
@given(st.sampled_from(DTYPES), OPS, st.integers(0, 2**31), st.integers(1, 3))
def test_processing_is_the_zoos_definition_over_the_whole_volume(dtype, ops, seed, channels):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        x = (rng.standard_normal((1, channels, 6, 9, 7)) * 50 + 20).astype(dt)
    else:
        info = np.iinfo(dt)
        x = rng.integers(info.min, int(info.max) + 1, size=(1, channels, 6, 9, 7)).astype(dt)
    fitted = Processing(_steps(ops)).fit(x)
    if any(o["op"] in ("scale_range", "zero_mean_unit_variance") and not i for i, o in enumerate(ops)):
        assert fitted.statistics[0]["method"] == ("exact histogram" if dt.kind != "f" else "all voxels")
    got = fitted.apply(torch.from_numpy(x.astype(np.float64))).numpy()
    expected = apply_processing(x, [{**o, "eps": 1e-6} for o in ops], 1)
    # statistics after a first step are measured on float32 values (the model's type)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # one window measured on its own would map differently: the statistics are the volume's
    window = fitted.apply(torch.from_numpy(x[:, :, :3].astype(np.float64))).numpy()
    np.testing.assert_allclose(window, got[:, :, :3], rtol=1e-12, atol=1e-15)


@fast(30)
@given(st.sampled_from(DTYPES), st.sampled_from(["percentile", "mean-std"]), st.integers(0, 2**31))
def test_our_normalisation_as_package_steps_maps_to_the_same_bits(dtype, mode, seed):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    x = (rng.random((1, 1, 7, 11, 5)) * (100 if dt.kind == "f" else np.iinfo(dt).max)).astype(dt)
    ours = Normalisation(mode).fit(x)
    steps = Processing((Step("ensure_dtype", {"dtype": "float32"}), *normalisation_as_steps(Normalisation(mode)),
                        Step("ensure_dtype", {"dtype": "float32"}))).fit(x)
    t = torch.from_numpy(x.astype(np.float32))
    assert torch.equal(ours.apply(t.clone()), steps.apply(t.clone()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_and_float_volumes_through_a_package(tmp_path, dtype):
    path = build_package(tmp_path, postprocessing=({"op": "softmax"},))
    package = read_package(path)
    model = load_package(path)
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    hi = 200 if dt.kind == "f" else min(int(np.iinfo(dt).max), 3000)
    lo = 0 if dt.kind in "uf" else -min(120, hi)
    x = (rng.random((1, 1, 40, 56)) * (hi - lo) + lo + np.linspace(0, 0.3 * (hi - lo), 56)).clip(lo, hi).astype(dt)
    got, _ = tiled(model, x, package, window=24)
    same, _ = tiled(model, x.astype(np.float32), package, window=24)
    assert torch.equal(got, same)  # an exact histogram gives numpy's percentiles, as the float copy
    pre = apply_processing(x, [{"op": "scale_range", "low": 1.0, "high": 99.8}], 1)
    with torch.no_grad():
        whole = torch.softmax(model.net(torch.from_numpy(pre.astype(np.float32))), 1)
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)


def test_postprocessing_runs_on_the_blended_output_in_and_out_of_core(tmp_path):
    path = build_package(tmp_path / "p", postprocessing=({"op": "sigmoid"}, {"op": "binarize", "threshold": 0.5}),
                         classes=1)
    package = read_package(path)
    model = load_package(path)
    x = np.random.default_rng(2).random((1, 1, 64, 48)).astype(np.float32) * 500
    got, grid = tiled(model, x, package, window=24, step=8)  # windows overlap: blended, then binarized
    assert set(np.unique(got.numpy())) <= {0.0, 1.0}
    event = predict(PackageSpec(str(path)), x, grid, tmp_path / "out.zarr", weighting=Weighting("border", 0.0),
                    device="cpu", region=(32, 32), chunks=(16, 16), threshold=0.5, axes="ncyx")
    assert event.kind == "done"
    store = Prediction(tmp_path / "out.zarr")
    np.testing.assert_array_equal(store.probabilities()[...], got.numpy())
    np.testing.assert_array_equal(store.labels()[...], got.numpy()[:, 0].astype(np.uint8))  # probabilities already


def test_a_package_run_resumes_with_its_statistics(tmp_path):
    import napari_qlty.core.processing as processing
    from napari_qlty import iter_predict

    path = build_package(tmp_path / "p", weights=("torchscript",))
    package = read_package(path)
    x = (np.random.default_rng(4).random((1, 1, 64, 48)) * 4000).astype(np.uint16)
    grid = package_grid(package, x.shape[2:], window=24)
    kwargs = dict(weighting=Weighting("border", 0.0), device="cpu", region=(32, 32), chunks=(16, 16), axes="ncyx")
    events = iter_predict(PackageSpec(str(path)), x, grid, tmp_path / "out.zarr", **kwargs)
    for event in events:
        if event.kind == "region":
            break
    events.close()  # stopped after one region
    calls = []
    original = processing.statistics
    processing.statistics = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        done = list(iter_predict(PackageSpec(str(path)), x, grid, tmp_path / "out.zarr", **kwargs))
    finally:
        processing.statistics = original
    assert done[0].regions_done == 1 and done[-1].kind == "done"
    assert not calls  # the resume took the store's statistics of the whole volume
    expected = infer(load_package(path), x, grid, Weighting("border", 0.0)).numpy()
    np.testing.assert_array_equal(Prediction(tmp_path / "out.zarr").probabilities()[...], expected)


# -- the window and the border ---------------------------------------------------------------------
@fast(60)
@given(st.integers(1, 4), st.integers(0, 4), st.integers(1, 8), st.integers(0, 6),
       st.lists(st.integers(1, 300), min_size=2, max_size=3))
def test_default_grid_takes_valid_windows_and_the_halo(k_min, extra, step, halo, shape):
    from napari_qlty.models.bioimageio.package import Package, TensorInfo

    minimum = k_min * step + extra
    space = ("y", "x")
    info = TensorInfo("raw", ("batch", "channel", *space), space, 1, sizes=tuple((a, (minimum, step)) for a in space))
    out = TensorInfo("out", ("batch", "channel", *space), space, 2, halo=tuple((a, halo) for a in space))
    package = Package("p", "p", "rdf.yaml", "p", "0.5", info, out, ())
    grid = package_grid(package, shape)
    for w, b, s, size in zip(grid.window[-2:], grid.border[-2:], grid.step[-2:], shape[-2:]):
        assert w >= minimum and (w - minimum) % step == 0 and b == halo and 2 * b < w
        assert s % step == 0 and 1 <= s <= max(step, w - 2 * b)
        assert w <= max(size, minimum + step * max(0, -(-(2 * halo + 1 - minimum) // step)))
    assert grid.pad == ("reflect" if any(w > s for w, s in zip(grid.window, shape)) else None)


def test_a_window_the_model_cannot_take_names_the_valid_sizes(tmp_path):
    path = build_package(tmp_path)
    package = read_package(path)
    with pytest.raises(ValueError, match=r"window along x must be a size the model takes: 16 \+ k\*8 "
                                         r"\(16, 24, 32, 40, \.\.\.\); got 20"):
        package_grid(package, (48, 40), window=(16, 20))
    model = load_package(path)
    with pytest.raises(ValueError, match="window along y must be a size the model takes"):
        infer(model, np.zeros((1, 1, 40, 40), np.float32), Grid((40, 40), 20, 10))


# -- safety -----------------------------------------------------------------------------------------
def test_reading_needs_no_network_and_runs_nothing_before_acceptance(tmp_path, monkeypatch):
    from package_builders import ARCHITECTURE

    marker = tmp_path / "ran.txt"
    source = ARCHITECTURE + f"\nopen({str(marker)!r}, 'a').write('ran')\n"
    path = build_package(tmp_path / "p", source=source, weights=("pytorch_state_dict",))
    marker.unlink()  # the builder ran it (as its author did)

    def refuse(*args, **kwargs):
        raise AssertionError("napari-qlty tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loads = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or original(*a, **k))

    package = read_package(path)
    PackageSpec(str(path)).fingerprint()
    with pytest.raises(ModelLoadError, match=r"running the Python file arch\.py it holds \(SmallNet\).*"
                                             r"accept_code=True"):
        load_package(path)
    with pytest.raises(ModelLoadError, match="accept"):
        load_model(str(path))  # a path alone accepts nothing
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="changed since you accepted it"):
        load_package(path, accept_code="0" * 64)
    assert not marker.exists()
    sha = hashlib.sha256((path / "arch.py").read_bytes()).hexdigest()
    model = load_package(path, accept_code=sha)
    assert marker.read_text() == "ran" and loads and all(w is True for w in loads)
    assert package.weights[0].architecture == "arch.py"
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_changed_or_outside_files_are_refused(tmp_path):
    path = build_package(tmp_path / "p")
    weights = path / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        load_package(path, weights="pytorch_state_dict", accept_code=True)

    rdf = yaml.safe_load((path / "rdf.yaml").read_text())
    rdf["weights"].pop("pytorch_state_dict")
    rdf["weights"]["torchscript"].pop("parent")
    rdf["weights"]["torchscript"]["source"] = "../elsewhere.torchscript"
    rdf["weights"]["torchscript"].pop("sha256")
    (path / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(ModelLoadError, match="lies outside the package"):
        load_package(path)


def _edited(path: Path, edit) -> Path:
    rdf = yaml.safe_load((path / "rdf.yaml").read_text())
    edit(rdf)
    (path / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["outputs"][0]["postprocessing"].insert(0, {"id": "scale_range", "kwargs": {"max_percentile": 99}}),
     "needs statistics of the model's whole output"),
    (lambda r: r["outputs"][0]["axes"][2]["size"].update(offset=-4), "is not the size of the input's"),
    (lambda r: r["inputs"].append({**r["inputs"][0], "id": "mask"}), "one input and one output"),
    (lambda r: r["outputs"][0]["postprocessing"].append(
        {"id": "custom", "source": "arch.py", "callable": "SmallNet"}), "declares the custom postprocessing"),
    (lambda r: r["weights"].update(pytorch_state_dict=None, torchscript=None,
                                   onnx={"source": "arch.py", "opset_version": 15}), "has only onnx weights"),
])
def test_what_cannot_run_tiled_is_refused_with_the_reason(tmp_path, edit, message):
    path = _edited(build_package(tmp_path / "p"), edit)
    with pytest.raises(ModelLoadError, match=message):
        read_package(path)


def test_an_invalid_description_names_the_field(tmp_path):
    path = _edited(build_package(tmp_path / "p"), lambda r: r["inputs"][0]["axes"][2]["size"].update(step=0))
    with pytest.raises(ModelLoadError, match=r"not a valid bioimage.io description: inputs\.0\.axes"):
        read_package(path)


# -- ours out, and back in -----------------------------------------------------------------------------
def _sample(dims: int, dtype="uint16"):
    from napari_qlty.data.tomogram import make_tomogram

    image = make_tomogram((24, 96, 80), seed=1).image
    image = image[12] if dims == 2 else image
    lo, hi = np.percentile(image, [0.5, 99.5])
    scaled = np.clip((image - lo) / (hi - lo), 0, 1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    return (scaled * (info.max // 2) if info else scaled).astype(dtype)


RECIPES = {
    "unet 2d": ({"factory": "napari_qlty.train.networks:unet", "factory_kwargs": {"dims": 2, "channels": 4},
                 "window": [64, 64], "axes": "yx"}, 2, "percentile"),
    "msdnet 3d": ({"factory": "napari_qlty.train.networks:msdnet",
                   "factory_kwargs": {"dims": 3, "layers": 4, "max_dilation": 2},
                   "window": [16, 24, 24], "axes": "zyx"}, 3, "mean-std"),
}


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_export_then_load_gives_identical_results(tmp_path, kind):
    from napari_qlty.train import save_checkpoint
    from napari_qlty.train.networks import msdnet, unet

    recipe, dims, mode = RECIPES[kind]
    torch.manual_seed(0)
    net = (unet if "unet" in recipe["factory"] else msdnet)(**recipe["factory_kwargs"]).eval()
    image = _sample(dims)
    checkpoint = save_checkpoint(net, tmp_path / "model.pt", recipe["factory"], recipe["factory_kwargs"], {
        "window": recipe["window"], "axes": recipe["axes"], "classes": ["background", "tube"],
        "normalisation": Normalisation(mode).to_json(), "name": kind})
    path = export_package(checkpoint, tmp_path / "model.zip", image)
    package = read_package(path)
    assert package.classes == ("background", "tube") and package.input.space == tuple(recipe["axes"])
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    assert {"weights.torchscript", "weights.pt", "napari_qlty_networks.py", "cover.png", "test_input.npy",
            "test_output.npy", "README.md", "rdf.yaml"} <= names
    assert rdf["format_version"] == "0.5.4" and rdf["config"]["napari_qlty"]["window"] == dict(
        zip(recipe["axes"], recipe["window"]))
    pre = [s["id"] for s in rdf["inputs"][0]["preprocessing"]]
    assert pre == ["ensure_dtype", "scale_range" if mode == "percentile" else "zero_mean_unit_variance",
                   "ensure_dtype"]
    assert [s["id"] for s in rdf["outputs"][0]["postprocessing"]] == ["softmax"]

    x = image[None, None]
    grid = package_grid(package, x.shape[2:])
    original = load_model(ModelSpec(str(checkpoint)))
    expected = infer(original, x, grid, Weighting("border", 0.0)).softmax(1)
    for weights in ("pytorch_state_dict", "torchscript"):
        got = infer(load_package(path, weights=weights, accept_code=True), x, grid, Weighting("border", 0.0))
        assert torch.equal(got, expected), (weights, float((got - expected).abs().max()))
    test_in, test_out = package_tensors(path)
    got, _ = tiled(load_package(path), test_in, package)
    np.testing.assert_allclose(got.numpy(), test_out, rtol=1e-5, atol=1e-6)


def test_the_demos_ensemble_exports_and_reloads(tmp_path):
    from napari_qlty.train import Ensemble, save_checkpoint, save_ensemble
    from napari_qlty.train.networks import msdnet, unet

    torch.manual_seed(1)
    members = [unet(dims=2, channels=4), msdnet(dims=2, layers=3)]
    paths = []
    for i, (net, factory, kwargs) in enumerate(zip(members, ("unet", "msdnet"),
                                                   ({"dims": 2, "channels": 4}, {"dims": 2, "layers": 3}))):
        paths.append(save_checkpoint(net, tmp_path / f"m{i}.pt", f"napari_qlty.train.networks:{factory}", kwargs,
                                     {"window": [32, 32], "axes": "yx", "classes": ["a", "b"],
                                      "normalisation": Normalisation("percentile").to_json()}))
    ensemble = Ensemble([m.eval() for m in members]).eval()
    checkpoint = save_ensemble(ensemble, tmp_path / "ensemble.pt", paths)
    image = _sample(2, "uint8")
    path = export_package(checkpoint, tmp_path / "ensemble", image)  # a folder
    package = read_package(path)
    assert package.output.processing.identity  # probabilities already
    x = image[None, None]
    grid = package_grid(package, x.shape[2:])
    expected = infer(load_model(ModelSpec(str(checkpoint))), x, grid, Weighting("border", 0.0))
    got = infer(load_package(path, weights="pytorch_state_dict", accept_code=True), x, grid, Weighting("border", 0.0))
    assert torch.equal(got, expected)
    scripted = infer(load_package(path), x, grid, Weighting("border", 0.0))
    torch.testing.assert_close(scripted, expected, rtol=1e-5, atol=1e-6)


def test_export_never_replaces_what_it_did_not_write(tmp_path):
    from napari_qlty.train.networks import unet

    recipe = {**RECIPES["unet 2d"][0], "classes": ["a", "b"]}
    net = unet(**recipe["factory_kwargs"]).eval()
    foreign = tmp_path / "theirs.zip"
    foreign.write_bytes(b"not ours")
    with pytest.raises(StoreError, match="did not write"):
        export_package(net, foreign, _sample(2), recipe=recipe)
    assert foreign.read_bytes() == b"not ours"
    ours = export_package(net, tmp_path / "ours.zip", _sample(2), recipe=recipe)
    with pytest.raises(StoreError, match="already holds a bioimage.io package exported by napari-qlty"):
        export_package(net, ours, _sample(2), recipe=recipe)
    assert export_package(net, ours, _sample(2), recipe=recipe, overwrite=True) == ours
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_exported_package_passes_the_model_zoos_own_test(tmp_path):
    from bioimageio.core import test_model

    from napari_qlty.train.networks import unet

    recipe = {**RECIPES["unet 2d"][0], "classes": ["a", "b"], "normalisation": Normalisation("percentile").to_json()}
    torch.manual_seed(2)
    path = export_package(unet(**recipe["factory_kwargs"]).eval(), tmp_path / "model.zip", _sample(2),
                          recipe=recipe)
    summary = test_model(str(path))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in names
    assert "Reproduce test outputs from test inputs (torchscript)" in names


def test_a_module_without_a_known_factory_exports_torchscript_only(tmp_path):
    torch.manual_seed(0)
    net = network({"dims": 2, "in_channels": 1, "classes": 2}).eval()
    with pytest.warns(UserWarning, match="TorchScript weights only"):
        path = export_package(net, tmp_path / "m.zip", _sample(2, "float32"),
                              recipe={"factory": "somewhere:else", "axes": "yx", "window": [32, 32]})
    package = read_package(path)
    assert [w.format for w in package.weights] == ["torchscript"]
    assert package.output.halo == (("y", REACH), ("x", REACH))  # the reach, measured
