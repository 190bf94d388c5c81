"""Tests for the synthetic tomogram generator (napari_qlty.data.tomogram)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_qlty.data import tomogram as sd
from napari_qlty.data.tomogram import (
    DEFAULT_SHAPE,
    IGNORE,
    PAPER_SHAPE,
    Tomogram,
    make_tomogram,
)
from napari_qlty._napari.samples import napari_sample_small

PLANE_AXIS = {"xy": 0, "xz": 1, "yz": 2}


@pytest.fixture(scope="module")
def tomo() -> Tomogram:
    return make_tomogram()


def _annotated_plane_mask(t: Tomogram) -> np.ndarray:
    on = np.zeros(t.labels.shape, dtype=bool)
    for name, axis in PLANE_AXIS.items():
        for i in t.annotated_slices[name]:
            sl = [slice(None)] * 3
            sl[axis] = i
            on[tuple(sl)] = True
    return on


def _dilate(labels: np.ndarray, half: int) -> np.ndarray:
    """Chebyshev dilation of a 3-D 0/1 array (reference, via torch max-pool)."""
    t = torch.from_numpy(labels.astype(np.float32))[None, None]
    return F.max_pool3d(t, 2 * half + 1, stride=1, padding=half)[0, 0].numpy() > 0


# ----------------------------------------------------------------------------- basics


def test_constants():
    assert PAPER_SHAPE == (236, 720, 510)
    assert DEFAULT_SHAPE == (64, 192, 160)
    assert IGNORE == -1


def test_dtypes_and_shapes(tomo: Tomogram):
    assert tomo.image.shape == tomo.labels.shape == tomo.annotations.shape == DEFAULT_SHAPE
    assert tomo.image.dtype == np.float32
    assert tomo.labels.dtype == np.uint8
    assert tomo.annotations.dtype == np.int8
    assert set(np.unique(tomo.labels)) == {0, 1}
    assert set(np.unique(tomo.annotations)) == {IGNORE, 0, 1}
    assert set(tomo.annotated_slices) == {"xy", "xz", "yz"}


def test_image_normalised(tomo: Tomogram):
    assert np.isfinite(tomo.image).all()
    assert abs(float(tomo.image.mean())) < 1e-3
    assert abs(float(tomo.image.std()) - 1.0) < 1e-3


def test_filaments_are_brighter(tomo: Tomogram):
    fil = tomo.image[tomo.labels == 1].mean()
    bg = tomo.image[tomo.labels == 0].mean()
    assert fil - bg > 1.0


def test_deterministic():
    a = make_tomogram((24, 40, 32), seed=3)
    b = make_tomogram((24, 40, 32), seed=3)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.annotations, b.annotations)
    assert a.annotated_slices == b.annotated_slices
    c = make_tomogram((24, 40, 32), seed=4)
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.image, c.image)


def test_default_call_deterministic(tomo: Tomogram):
    again = make_tomogram(DEFAULT_SHAPE, 0)
    assert tomo.image.tobytes() == again.image.tobytes()
    assert np.array_equal(tomo.annotations, again.annotations)


def test_filament_fraction(tomo: Tomogram):
    frac = float(tomo.labels.mean())
    assert 0.02 <= frac <= 0.05, frac


def test_n_filaments_explicit():
    one = make_tomogram((32, 64, 64), seed=1, n_filaments=1)
    many = make_tomogram((32, 64, 64), seed=1, n_filaments=20)
    assert 0 < one.labels.sum() < many.labels.sum()


# ----------------------------------------------------------------------- annotations


def test_annotation_fraction_and_ratio(tomo: Tomogram):
    n_fil = int((tomo.annotations == 1).sum())
    n_bg = int((tomo.annotations == 0).sum())
    frac = (n_fil + n_bg) / tomo.annotations.size
    assert 6e-4 / 1.5 <= frac <= 6e-4 * 1.5, frac
    assert n_fil > 0 and n_bg > 0
    assert 10 <= n_bg / n_fil <= 40, (n_bg, n_fil)


def test_annotated_fraction_parameter():
    t = make_tomogram((48, 96, 96), seed=2, annotated_fraction=3e-3)
    frac = float((t.annotations != IGNORE).mean())
    assert 3e-3 / 1.5 <= frac <= 3e-3 * 1.5, frac


def test_annotated_slices_spread(tomo: Tomogram):
    for name, axis in PLANE_AXIS.items():
        idx = tomo.annotated_slices[name]
        assert len(idx) == 2
        assert idx == sorted(idx) and len(set(idx)) == 2
        assert all(isinstance(i, int) and 0 <= i < DEFAULT_SHAPE[axis] for i in idx)
        # one in each half of the axis
        assert idx[0] < DEFAULT_SHAPE[axis] / 2 <= idx[1]


def test_annotations_only_on_annotated_slices(tomo: Tomogram):
    on = _annotated_plane_mask(tomo)
    assert (tomo.annotations[~on] == IGNORE).all()
    # and every painted plane got something
    for name, axis in PLANE_AXIS.items():
        for i in tomo.annotated_slices[name]:
            assert (np.take(tomo.annotations, i, axis=axis) != IGNORE).any()


def test_annotations_agree_with_truth(tomo: Tomogram):
    assert (tomo.labels[tomo.annotations == 1] == 1).all()
    assert (tomo.labels[tomo.annotations == 0] == 0).all()


def test_background_strokes_keep_clear_of_filaments(tomo: Tomogram):
    near = _dilate(tomo.labels, 2)
    assert not near[tomo.annotations == 0].any()


# ---------------------------------------------------------------------------- internals


@pytest.mark.parametrize("seed", range(5))
def test_centerline_dense_and_crossing(seed: int):
    shape = (40, 120, 90)
    pts = sd._centerline(np.random.default_rng(seed), shape)
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    assert steps.max() <= 0.5 + 1e-9
    hi = np.asarray(shape) - 1.0
    for end in (pts[0], pts[-1]):  # both ends lie on a face of the box
        assert np.isclose(end, 0.0, atol=1e-6).any() or np.isclose(end, hi, atol=1e-6).any()


@pytest.mark.parametrize("radius", [0.8, 2.5, 3.3])
def test_paint_tube_matches_brute_force(radius: float):
    shape = (12, 15, 17)
    rng = np.random.default_rng(7)
    pts = rng.uniform(-2.0, 18.0, size=(40, 3))  # some points outside the volume too
    vol = np.zeros(shape, dtype=np.float32)
    sd._paint_tube(vol.reshape(-1), shape, pts, sd._ball_offsets(radius), radius, 0.9)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    d2 = ((grid[..., None, :] - pts) ** 2).sum(-1).min(-1)
    inner = d2 <= radius**2 * (1 - 1e-5)
    outer = d2 <= radius**2 * (1 + 1e-5)
    painted = vol > 0
    assert painted[inner].all()
    assert not painted[~outer].any()
    assert set(np.unique(vol)) <= {0.0, np.float32(0.9)}


def test_gaussian_blur_matches_conv3d():
    x = torch.randn((9, 20, 13), generator=torch.Generator().manual_seed(0))
    sigma = 1.3
    got = sd._gaussian_blur(x.clone(), sigma)
    k = torch.tensor(sd._gaussian_kernel(sigma), dtype=torch.float32)
    r = (len(k) - 1) // 2
    ref = x[None, None]
    for axis in range(3):
        ks = [1, 1, 1]
        ks[axis] = len(k)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        ref = F.conv3d(F.pad(ref, pad, mode="replicate"), k.view(1, 1, *ks))
    assert torch.allclose(got, ref[0, 0], atol=1e-5)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "shape",
    [(15, 32, 32), (32, 32, 0), (32, 32), (32, 32, 32, 32), (32.0, 32, 32), (True, 32, 32),
     "abc", None, 32],
)
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="shape") as info:
        make_tomogram(shape)
    assert "16" in str(info.value)


def test_bad_seed_raises():
    with pytest.raises(TypeError, match="seed"):
        make_tomogram((16, 16, 16), seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        make_tomogram((16, 16, 16), seed=-1)


@pytest.mark.parametrize(
    "kwargs",
    [{"radius": 0.0}, {"radius": 20.0}, {"noise": -1.0}, {"blur_sigma": -0.5},
     {"annotated_fraction": 0.0}, {"annotated_fraction": 0.9}, {"n_filaments": 0}],
)
def test_bad_params_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_tomogram((16, 16, 16), **kwargs)


def test_numpy_ints_accepted():
    t = make_tomogram(np.array([16, 20, 18]), seed=np.int64(1))
    assert t.image.shape == (16, 20, 18)


# ------------------------------------------------------------------------------ napari


def test_napari_sample_small_layer_data(tomo: Tomogram):
    layers = napari_sample_small()
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels"]
    (image, image_meta, _), (sparse, sparse_meta, _), (truth, truth_meta, _) = layers
    assert image_meta == {"name": "tomogram"}
    assert sparse_meta["name"] == "sparse labels"
    features = sparse_meta["features"]  # napari's status bar and the widgets name the classes
    assert list(features["index"]) == [0, 1, 2] and list(features["class"]) == ["unlabelled", "background", "filament"]
    assert truth_meta == {"name": "ground truth", "visible": False}
    assert image.dtype == np.float32 and np.array_equal(image, tomo.image)
    assert sparse.dtype == np.uint8 and truth.dtype == np.uint8
    assert np.array_equal(sparse, tomo.annotations.astype(np.int16) + 1)  # 0 = unlabelled
    assert set(np.unique(sparse)) == {0, 1, 2}
    assert np.array_equal(truth, tomo.labels)


def test_module_imports_only_numpy_and_torch():
    """scipy/napari/Qt are not needed: check the file's own imports (cheap, no subprocess)."""
    tree = ast.parse(Path(sd.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add((node.module or "").split(".")[0])
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"numpy", "torch"}, third_party


# ---------------------------------------------------------------------------- property


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(*[st.integers(16, 48)] * 3),
    seed=st.integers(0, 2**16),
)
def test_small_random_shapes(shape, seed):
    t = make_tomogram(shape, seed)
    assert t.image.shape == t.labels.shape == t.annotations.shape == shape
    assert np.isfinite(t.image).all()
    assert (t.annotations == 1).any() and (t.annotations == 0).any()
    assert (t.labels[t.annotations == 1] == 1).all()
    assert (t.labels[t.annotations == 0] == 0).all()
    assert (t.annotations[~_annotated_plane_mask(t)] == IGNORE).all()


# ----------------------------------------------------------------------------- strokes at a spot
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(0, 63), y=st.integers(0, 191), x=st.integers(0, 159), half=st.integers(2, 24),
       seed=st.integers(0, 2**16), corrects=st.booleans(), clearance=st.integers(0, 3))
def test_strokes_at_a_spot_agree_with_the_truth_and_stay_in_the_box(tomo: Tomogram, z, y, x, half, seed, corrects,
                                                                    clearance):
    ann = tomo.annotations.copy()
    rng = np.random.default_rng(seed)
    predicted = (rng.random(tomo.labels.shape) < 0.1).astype(np.uint8) if corrects else None
    fil, bg = sd.paint_spot(tomo.labels, ann, (z, y, x), half, rng, filament=9, background=40, predicted=predicted,
                            clearance=clearance)
    new = (ann != tomo.annotations)
    assert int(new.sum()) == fil + bg and fil <= 9 and bg <= 40
    where = np.argwhere(new)
    assert (where[:, 0] == z).all()  # the slice through the spot
    assert (np.abs(where[:, 1] - y) <= half).all() and (np.abs(where[:, 2] - x) <= half).all()
    assert (tomo.annotations[new] == IGNORE).all()  # only unlabelled voxels were painted
    assert (ann[new] == tomo.labels[new]).all()  # strokes agree with the ground truth
    near = _dilate(tomo.labels, clearance)
    assert not (near & new & (ann == 0)).any()  # background strokes keep clear of filament
    box = tomo.labels[z, max(0, y - half): y + half, max(0, x - half): x + half]
    if (box == 1).sum() >= 9 + (tomo.annotations[z, max(0, y - half): y + half, max(0, x - half): x + half] == 1).sum():
        assert fil == 9  # filament enough in the box: the whole budget is painted


def test_strokes_correct_what_the_model_gets_wrong_first(tomo: Tomogram):
    z, y, x = np.argwhere(tomo.labels == 1)[len(np.argwhere(tomo.labels == 1)) // 2]
    predicted = np.zeros_like(tomo.labels)  # it misses every filament
    predicted[z, y - 20: y + 20, x + 8: x + 20] = 1  # and calls some background filament
    ann = np.full_like(tomo.annotations, IGNORE)
    fil, bg = sd.paint_spot(tomo.labels, ann, (z, y, x), 20, np.random.default_rng(0), filament=5, background=10,
                            predicted=predicted)
    assert fil == 5 and bg == 10
    assert ((predicted == 1) & ~_dilate(tomo.labels, 2)).sum() >= 10  # (false filament to paint over)
    assert (predicted[ann == 0] == 1).all()  # the background strokes went over the false filament
    assert (predicted[ann == 1] == 0).all()  # the filament strokes over missed filament
    with pytest.raises(ValueError, match="centre"):
        sd.paint_spot(tomo.labels, ann, (64, 0, 0), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="clearance"):
        sd.paint_spot(tomo.labels, ann, (z, y, x), 4, np.random.default_rng(0), clearance=-1)


def test_strokes_can_correct_a_filament_drawn_too_thick(tomo: Tomogram):
    """With no clearance, the background strokes go over false filament right at the edges."""
    margin = _dilate(tomo.labels, 1) & (tomo.labels == 0)  # one voxel around every filament
    z = int(np.argmax(margin.sum((1, 2))))
    ys, xs = np.nonzero(margin[z])
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    predicted = _dilate(tomo.labels, 1).astype(np.uint8)  # every filament a voxel too thick
    painted = {}
    for clearance in (0, 2):
        ann = np.full_like(tomo.annotations, IGNORE)
        painted[clearance] = sd.paint_spot(tomo.labels, ann, (z, y, x), 12, np.random.default_rng(1), filament=0,
                                           background=20, predicted=predicted, clearance=clearance)
        if clearance == 0:
            assert painted[0] == (0, 20) and (margin[ann == 0]).all()  # all of it on the too-thick edge
        else:
            assert not (margin & (ann == 0)).any()  # the sample's annotator never touches the edge
