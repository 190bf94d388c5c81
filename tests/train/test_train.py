"""Training on sparse labels: networks, masked loss, trainer, checkpoints, ensembles, scores."""

from __future__ import annotations

import itertools
import math
import re
import threading

import numpy as np
import pytest
import torch
from engine_testing import fast
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty.io.prediction import Prediction
from napari_qlty import Grid, Weighting, clean_pairs, infer
from napari_qlty.io.pairs_store import PairsDataset, export_pairs
from napari_qlty.models import ModelSpec, load_model
from napari_qlty.models.checkpoints import checkpoint_recipe
from napari_qlty.train import (
    Ensemble,
    InMemoryPairs,
    MSDNet,
    PlanarSampler,
    TrainConfig,
    UNet,
    VolumeSampler,
    checkpoint_spec,
    class_weights,
    confusion_matrix,
    f1_scores,
    iter_train,
    load_checkpoint,
    load_ensemble,
    macro_f1,
    masked_cross_entropy,
    near_seams,
    planar,
    save_checkpoint,
    save_ensemble,
    seam_report,
    train,
)
from napari_qlty.train.networks import reflect_index
from napari_qlty.train.trainer import evaluate


# -- networks --------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_unet_keeps_spatial_size(dims, levels):
    torch.manual_seed(0)
    net = UNet(dims=dims, in_channels=2, classes=3, channels=2, levels=levels).eval()
    for size in [(7, 9, 5), (8, 8, 8), (13, 6, 11)]:
        x = torch.randn(2, 2, *size[:dims])
        assert net(x).shape == (2, 3, *size[:dims])


@pytest.mark.parametrize("dims", [2, 3])
def test_msdnet_keeps_spatial_size_and_both_paths_agree(dims):
    torch.manual_seed(0)
    net = MSDNet(dims=dims, in_channels=1, classes=2, layers=5, width=2, max_dilation=3).eval()
    assert net.dilations == [1, 2, 3, 1, 2]
    for size in [(5, 7, 9), (11, 4, 6)]:
        x = torch.randn(1, 1, *size[:dims])
        with torch.no_grad():
            buffered = net(x)  # inference path: one preallocated buffer
        with torch.enable_grad():
            concatenated = net(x)  # training path: concatenation
        assert buffered.shape == (1, 2, *size[:dims])
        torch.testing.assert_close(buffered, concatenated.detach())


def test_msdnet_layers_see_all_previous():
    net = MSDNet(dims=2, in_channels=3, classes=2, layers=4, width=2)
    assert [c.in_channels for c in net.convs] == [3, 5, 7, 9]
    assert net.head.in_channels == 11


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1, 2)])
def test_planar_keeps_size_and_matches_slice_by_slice(axes):
    torch.manual_seed(0)
    model = planar("unet", context=1, axes=axes, channels=2, levels=1).eval()
    model.slices_per_batch = 3  # several chunks per axis
    x = torch.randn(2, 1, 7, 6, 5)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2, 7, 6, 5)
    # reference: every slice on its own, neighbours reflected at the faces
    probs = []
    for axis in axes:
        n = x.shape[2 + axis]
        ref = torch.empty(2, 2, 7, 6, 5)
        for i in range(n):
            idx = reflect_index(torch.arange(i - 1, i + 2), n)
            slab = x.index_select(2 + axis, idx).movedim(2 + axis, 2)  # (B, C, 3, h, w)
            with torch.no_grad():
                y = model.net(slab.reshape(2, 3, *slab.shape[3:]))
            sl = [slice(None)] * 5
            sl[2 + axis] = i
            ref[tuple(sl)] = y
        probs.append(ref)
    if len(axes) == 1:
        torch.testing.assert_close(out, probs[0], atol=1e-5, rtol=1e-5)
    else:
        mean = torch.stack([p.softmax(1) for p in probs]).mean(0)
        torch.testing.assert_close(out.softmax(1), mean, atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("window, channels, message", [
    ((16, 16), 1, "the model takes 3D windows (z, y, x: it segments each slice with its neighbours), but the "
                  "windows are 2D: choose a volume"),
    ((2, 8, 16, 16), 1, "but the windows are 4D: run each time point on its own"),
    ((8, 16, 16), 3, "the model expects 1 channel, the image has 3"),  # not "5 channels, the image has 15"
])
def test_a_planar_ensemble_says_what_it_takes_in_the_images_terms(window, channels, message):
    from napari_qlty.models.probes import check_model_output

    members = [planar("unet", context=2, channels=2, levels=1), planar("msdnet", context=2, layers=2)]
    with pytest.raises(ValueError, match=re.escape(message)):
        check_model_output(Ensemble(members).eval(), channels, window, "cpu")
    assert check_model_output(Ensemble(members).eval(), 1, (8, 16, 16), "cpu") == 2

def test_reflect_index():
    assert reflect_index(torch.arange(-3, 8), 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]
    assert reflect_index(torch.arange(-2, 3), 1).tolist() == [0] * 5


# -- the loss ------------------------------------------------------------------------------
def test_masked_loss_has_zero_gradient_on_unlabelled_voxels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    labels = torch.randint(0, 3, (2, 5, 6))
    labels[torch.rand(2, 5, 6) < 0.7] = -1
    loss = masked_cross_entropy(logits, labels, weight=torch.tensor([1.0, 2.0, 0.5]))
    loss.backward()
    unlabelled = (labels == -1).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[unlabelled] == 0)
    assert torch.all(logits.grad.abs().sum(1)[labels != -1] > 0)
    # and the unlabelled logits do not change the value
    other = logits.detach().clone()
    other[unlabelled] = torch.randn(int(unlabelled.sum()))
    assert masked_cross_entropy(other, labels, weight=torch.tensor([1.0, 2.0, 0.5])).item() == pytest.approx(loss.item())


def test_masked_loss_without_labels_is_zero_not_nan():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((1, 4, 4), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_class_weights():
    w = class_weights([900, 100], power=1.0)
    torch.testing.assert_close(w, torch.tensor([1000 / 1800, 1000 / 200]))
    torch.testing.assert_close(class_weights([900, 100], 0.0), torch.ones(2))
    assert class_weights([10, 0], 0.5)[1] == 0


# -- samples and augmentation ---------------------------------------------------------------------
def synthetic_pairs(k=6, size=16, seed=0, fraction=0.05):
    """Pairs where the label is a pointwise function of the image (class 1 where x > 0.8)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(k, 1, size, size, size, generator=g)
    truth = (images[:, 0] > 0.8).long()
    labels = torch.full_like(truth, -1)
    keep = torch.rand(truth.shape, generator=g) < fraction
    labels[keep] = truth[keep]
    return InMemoryPairs(images, labels), images, truth


@pytest.mark.parametrize("kind", ["planar", "volume"])
def test_samples_keep_image_and_labels_aligned(kind):
    pairs, _, _ = synthetic_pairs(k=3, size=12, fraction=0.2)
    if kind == "planar":
        sampler = PlanarSampler(pairs, patch=8, context=1, augment=True, intensity=0.0, seed=1)
        centre = 1  # the middle slice of the 3 channels
    else:
        sampler = VolumeSampler(pairs, patch=8, augment=True, intensity=0.0, seed=1)
        centre = 0
    for _ in range(40):
        x, y = sampler.sample()
        labelled = y != -1
        assert labelled.any()  # every sample is centred near a label
        assert torch.equal(y[labelled], (x[centre][labelled] > 0.8).long())


def test_planar_sampler_prefers_painted_planes():
    images = torch.randn(1, 1, 16, 16, 16)
    labels = torch.full((1, 16, 16, 16), -1)
    labels[0, 5, 2:14, 2:14] = 0  # one painted XY plane
    sampler = PlanarSampler(InMemoryPairs(images, labels), patch=8, context=2, seed=0, augment=False)
    planes = 0
    for _ in range(200):
        _, y = sampler.sample()
        rows, cols = np.nonzero((y != -1).numpy())
        planes += len(set(rows)) > 1 and len(set(cols)) > 1  # a patch of the plane, not a line across it
    # orientations are drawn in proportion to their labels: 144 in the XY plane, 12 in each line
    assert planes / 200 == pytest.approx(144 / 168, abs=0.08)


# -- training --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,net,planar_", [("unet", {"channels": 4, "levels": 1}, True),
                                              ("msdnet", {"layers": 4, "width": 2}, True),
                                              ("unet", {"channels": 4, "levels": 0}, False)])
def test_a_few_steps_reduce_the_loss(arch, net, planar_):
    pairs, _, _ = synthetic_pairs()
    config = TrainConfig(arch=arch, net=net, planar=planar_, patch=12, batch_size=4, epochs=1,
                         steps_per_epoch=40, lr=1e-2, final_lr=1e-2, augment=False, seed=0,
                         class_weight_power=None)
    sampler = (PlanarSampler(pairs, 12, 2, augment=False, seed=5) if planar_
               else VolumeSampler(pairs, 12, augment=False, seed=5))
    fixed = sampler.fixed_batches(16, 8)
    from napari_qlty.train import build_model

    model = build_model(config, 3)
    inner = model.net if planar_ else model
    before, _, _ = evaluate(inner, fixed, 2, None, -1, "cpu")
    train(config, pairs, model=model)
    after, _, _ = evaluate(inner, fixed, 2, None, -1, "cpu")
    assert after < 0.75 * before


def test_events_validation_and_stop():
    pairs, _, _ = synthetic_pairs()
    config = TrainConfig(arch="unet", net={"channels": 2, "levels": 1}, patch=8, batch_size=2, epochs=3,
                         steps_per_epoch=2, val_samples=4)
    events = list(iter_train(config, pairs, pairs))
    kinds = [e.kind for e in events]
    assert kinds == ["start", "step", "step", "epoch", "step", "step", "epoch", "step", "step", "epoch", "done"]
    epochs = [e for e in events if e.kind == "epoch"]
    assert all(e.val_f1 is not None and 0 <= e.val_f1 <= 1 and e.loss > 0 for e in epochs)
    assert "val F1" in epochs[0].line()
    # a stop flag ends the run after the current step
    flag = threading.Event()
    seen = []
    for e in iter_train(config, pairs, stop=flag):
        seen.append(e.kind)
        if e.kind == "step":
            flag.set()
    assert seen == ["start", "step", "epoch", "stopped"]
    calls = iter(range(100))
    seen = [e.kind for e in iter_train(config, pairs, stop=lambda: next(calls) >= 3)]
    assert seen[-1] == "stopped" and seen.count("step") == 3


def test_time_limit_stops():
    pairs, _, _ = synthetic_pairs()
    config = TrainConfig(arch="unet", net={"channels": 2, "levels": 1}, patch=8, batch_size=2, epochs=100,
                         steps_per_epoch=100, max_seconds=0.0)
    events = list(iter_train(config, pairs))
    assert events[-1].kind == "stopped" and events[-1].message == "time limit reached"


def test_trains_from_an_exported_dataset(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 1, 20, 24, 24)).astype(np.float32)
    labels = np.full((1, 20, 24, 24), -1, np.int16)
    labels[0, 6, 3:20, 4:20] = (image[0, 0, 6, 3:20, 4:20] > 0.5)
    for _ in export_pairs(image, labels, Grid((20, 24, 24), 16, 8), tmp_path / "pairs.zarr"):
        pass
    train_set, val_set = PairsDataset(tmp_path / "pairs.zarr").split(0.25, seed=0)
    config = TrainConfig(arch="unet", net={"channels": 2, "levels": 1}, patch=12, batch_size=2, epochs=1,
                         steps_per_epoch=2, val_samples=2)
    result = train(config, train_set, val_set, checkpoint=tmp_path / "net.pt")
    assert result.last.kind == "done"
    assert (tmp_path / "net.pt").is_file() and not (tmp_path / "net.json").exists()  # one file
    assert checkpoint_recipe(tmp_path / "net.pt")["window"] == [16, 16, 16]


# -- checkpoints -------------------------------------------------------------------------------
def _same_outputs(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch,net", [("unet", {"channels": 3, "levels": 2}),
                                      ("msdnet", {"layers": 4, "width": 1, "max_dilation": 2})])
def test_checkpoints_reload_through_model_spec(tmp_path, arch, net):
    pairs, _, _ = synthetic_pairs()
    config = TrainConfig(arch=arch, net=net, patch=8, batch_size=2, epochs=1, steps_per_epoch=3)
    result = train(config, pairs, checkpoint=tmp_path / f"{arch}.pt")
    x = torch.randn(1, 1, 9, 12, 10)
    # through the recipe inside it
    spec = checkpoint_spec(tmp_path / f"{arch}.pt")
    meta = checkpoint_recipe(tmp_path / f"{arch}.pt")
    assert meta["factory"] == "napari_qlty.train.networks:planar"
    _same_outputs(load_model(spec), result.model, x)
    # and spelt out by hand, as on the command line
    spec = ModelSpec(str(tmp_path / f"{arch}.pt"), factory="napari_qlty.train.networks:planar",
                     factory_kwargs=meta["factory_kwargs"])
    _same_outputs(load_model(spec), result.model, x)
    assert meta["config"]["arch"] == arch and meta["epoch"] == 1


@pytest.mark.parametrize("dims", [2, 3])
def test_plain_network_checkpoint(tmp_path, dims):
    torch.manual_seed(0)
    net = UNet(dims=dims, channels=2, levels=1).eval()
    save_checkpoint(net, tmp_path / "u.pt", "napari_qlty.train.networks:unet",
                    {"dims": dims, "channels": 2, "levels": 1})
    spec = ModelSpec(str(tmp_path / "u.pt"), factory="napari_qlty.train.networks:unet",
                     factory_kwargs={"dims": dims, "channels": 2, "levels": 1})
    x = torch.randn(1, 1, *(11, 9, 7)[:dims])
    _same_outputs(load_model(spec), net, x)
    _same_outputs(load_checkpoint(tmp_path / "u.pt"), net, x)


def test_calibration_moves_the_head_bias_only(tmp_path):
    pairs, _, _ = synthetic_pairs()
    common = {"arch": "unet", "net": {"channels": 2, "levels": 1}, "patch": 8, "batch_size": 2,
              "epochs": 1, "steps_per_epoch": 2, "class_weight_power": 1.0, "seed": 3}
    plain = train(TrainConfig(**common, calibrate=False), pairs).model.state_dict()
    result = train(TrainConfig(**common, calibrate=True), pairs, checkpoint=tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["state_dict"]
    live = result.model.state_dict()
    assert all(torch.equal(saved[k], live[k]) for k in live)  # the returned model is the saved one
    log_w = torch.log(class_weights([int((pairs.labels == c).sum()) for c in (0, 1)], 1.0))
    for k in live:
        if k == "net.head.bias":
            torch.testing.assert_close(live[k], plain[k] - log_w)
        else:
            assert torch.equal(live[k], plain[k]), k


@pytest.mark.parametrize("make", [lambda: UNet(dims=2, channels=3, levels=2, norm="batch"),
                                  lambda: UNet(dims=3, channels=2, levels=1, norm="batch"),
                                  lambda: MSDNet(dims=2, layers=4, width=2, norm="batch")])
def test_batchnorm_folds_into_the_convolutions(make):
    from napari_qlty.train.networks import fold_batchnorm

    torch.manual_seed(0)
    net = make()
    dims = net.dims
    net.train()
    for _ in range(3):  # give the running statistics something to hold
        net(torch.randn(4, 1, *(9,) * dims) * 2 + 1)
    net.eval()
    x = torch.randn(2, 1, *(11, 7, 10)[:dims])
    with torch.no_grad():
        before = net(x)
        fold_batchnorm(net)
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    # and it is the network the factory builds without norm
    plain = type(net)(**{"dims": dims, **({"channels": net.down[0][0].out_channels, "levels": len(net.down) - 1}
                                           if isinstance(net, UNet) else {"layers": 4, "width": 2})})
    plain.load_state_dict(net.state_dict())


def test_batchnorm_checkpoint_reloads_and_predicts(tmp_path):
    from napari_qlty import predict

    pairs, _, _ = synthetic_pairs()
    config = TrainConfig(arch="unet", net={"channels": 2, "levels": 1, "norm": "batch"}, patch=8, batch_size=4,
                         epochs=1, steps_per_epoch=3)
    result = train(config, pairs, checkpoint=tmp_path / "bn.pt")
    spec = checkpoint_spec(tmp_path / "bn.pt")
    assert checkpoint_recipe(tmp_path / "bn.pt")["factory_kwargs"]["norm"] is None
    x = torch.randn(1, 1, 12, 14, 10)
    _same_outputs(load_model(spec), result.model, x)
    # the folded model has no batch-norm buffers, so it goes through predict as an object
    grid = Grid(x.shape[2:], window=8, step=6, border=1)
    predict(result.model, x.numpy(), grid, tmp_path / "out.zarr", weighting=Weighting("border", 0.0),
            postprocess="softmax", device="cpu")
    expected = infer(result.model, x, grid, Weighting("border", 0.0), postprocess=lambda y: y.softmax(1))
    got = Prediction(tmp_path / "out.zarr").probabilities()[...]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


# -- ensembles ---------------------------------------------------------------------------------
class Fixed(torch.nn.Module):
    """Logits that depend on the input in a known way."""

    def __init__(self, scale):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return torch.cat([x * self.scale, -x * self.scale, x * 0], dim=1)


def test_ensemble_averages_probabilities():
    x = torch.randn(2, 1, 4, 5, 6)
    a, b = Fixed(1.0), Fixed(-3.0)
    with torch.no_grad():
        pa, pb = a(x).softmax(1), b(x).softmax(1)
        torch.testing.assert_close(Ensemble([a, b])(x), (pa + pb) / 2)
        torch.testing.assert_close(Ensemble([a, b], weights=[3, 1])(x), 0.75 * pa + 0.25 * pb)
        torch.testing.assert_close(Ensemble([a, b], output="log")(x).exp(), (pa + pb) / 2)
        # a member that already gives probabilities is not softmaxed twice
        torch.testing.assert_close(Ensemble([a, Ensemble([b])], probabilities=[False, True])(x), (pa + pb) / 2)
    with pytest.raises(ValueError):
        Ensemble([])
    with pytest.raises(ValueError):
        Ensemble([a, b], weights=[1, -1])


def test_ensemble_goes_through_the_stitcher():
    torch.manual_seed(0)
    members = [planar("unet", context=1, channels=2, levels=1).eval(),
               planar("msdnet", context=1, layers=3, width=1).eval()]
    model = Ensemble(members).eval()
    x = torch.randn(1, 1, 20, 22, 18)
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    weighting = Weighting("border", border_weight=0.0)
    together = infer(model, x, grid, weighting)
    apart = [infer(m, x, grid, weighting, postprocess=lambda y: y.softmax(1)) for m in members]
    # stitching is linear, so the stitched mean is the mean of the stitched
    torch.testing.assert_close(together, (apart[0] + apart[1]) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.sum(1), torch.ones(1, 20, 22, 18), atol=1e-5, rtol=1e-5)


def test_ensemble_checkpoint_reloads(tmp_path):
    pairs, _, _ = synthetic_pairs()
    paths, members = [], []
    for arch, net in [("unet", {"channels": 2, "levels": 1}), ("msdnet", {"layers": 3})]:
        config = TrainConfig(arch=arch, net=net, patch=8, batch_size=2, epochs=1, steps_per_epoch=2)
        members.append(train(config, pairs, checkpoint=tmp_path / f"{arch}.pt").model)
        paths.append(tmp_path / f"{arch}.pt")
    model = Ensemble(members).eval()
    save_ensemble(model, tmp_path / "ens.pt", paths)
    x = torch.randn(1, 1, 8, 10, 12)
    _same_outputs(load_checkpoint(tmp_path / "ens.pt"), model, x)
    _same_outputs(load_model(checkpoint_spec(tmp_path / "ens.pt")), model, x)
    _same_outputs(load_ensemble(paths), model, x)


def test_ensemble_factory_refuses_foreign_code():
    from napari_qlty.train.ensemble import ensemble

    with pytest.raises(ValueError, match=r"names the factory 'os:system', and napari-qlty never runs code"):
        ensemble([{"factory": "os:system", "factory_kwargs": {"command": "echo run"}}])


# -- scores --------------------------------------------------------------------------------
def brute_f1(truth, pred, classes, ignore=-1, mask=None):
    scores = []
    for c in range(classes):
        tp = fp = fn = 0
        for idx in np.ndindex(truth.shape):
            if truth[idx] == ignore or (mask is not None and not mask[idx]):
                continue
            t, p = truth[idx] == c, pred[idx] == c
            tp += t and p
            fp += p and not t
            fn += t and not p
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else math.nan, scores


@fast(30)
@given(st.integers(1, 4), st.integers(0, 10_000), st.booleans())
def test_macro_f1_against_brute_force(classes, seed, with_mask):
    rng = np.random.default_rng(seed)
    truth = rng.integers(-1, classes, (5, 6, 4))
    pred = rng.integers(0, classes, truth.shape)
    mask = rng.random(truth.shape) < 0.6 if with_mask else None
    expected, _ = brute_f1(truth, pred, classes, mask=mask)
    got = macro_f1(truth, pred, classes, mask=mask)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)
    cm = confusion_matrix(truth, pred, classes, mask=mask)
    assert cm.sum() == int(((truth != -1) & (mask if mask is not None else True)).sum())


def test_f1_scores_known_values():
    cm = np.array([[8, 2], [1, 4]])
    np.testing.assert_allclose(f1_scores(cm), [16 / 19, 8 / 11])
    assert np.isnan(f1_scores(np.array([[5, 0], [0, 0]]))[1])


def brute_near_seams(grid, distance):
    seams = grid.seams()
    out = np.zeros(grid.shape, bool)
    for idx in itertools.product(*(range(s) for s in grid.shape)):
        out[idx] = any(abs(i + 0.5 - s) <= distance for axis, i in enumerate(idx) for s in seams[axis])
    return out


@fast(25)
@given(st.data())
def test_near_seams_against_brute_force(data):
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(4, 14)) for _ in range(ndim))
    window = tuple(data.draw(st.integers(2, s)) for s in shape)
    step = tuple(data.draw(st.integers(1, w)) for w in window)
    grid = Grid(shape, window, step)
    distance = data.draw(st.sampled_from([0, 0.5, 1, 2, 3.5]))
    np.testing.assert_array_equal(near_seams(grid, distance), brute_near_seams(grid, distance))


def test_near_seams_paper_like_axis():
    grid = Grid((236,), 128, 108, 10)
    assert grid.seams()[0].tolist() == [118.0]
    assert np.nonzero(near_seams(grid, 2))[0].tolist() == [116, 117, 118, 119]


def test_seam_report_sees_an_artefact():
    grid = Grid((40, 40), 16, 12)
    truth = np.zeros((40, 40), np.int64)
    truth[::3] = 1
    pred = truth.copy()
    near = near_seams(grid, 2)
    pred[near] = 1 - pred[near]  # everything wrong near the seams
    report = seam_report(truth, pred, grid, 2)
    assert report["near"] == 0.0 and report["elsewhere"] == 1.0 and report["gap"] == 1.0
    assert report["voxels_near"] == int(near.sum())


def test_clean_pairs_feed_the_trainer():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 1, 16, 20, 20)).astype(np.float32))
    labels = torch.full((1, 16, 20, 20), -1, dtype=torch.int16)
    labels[0, 4, 2:18, 2:18] = 0
    labels[0, 4, 8:10, 8:10] = 1
    pairs = clean_pairs(x, labels, Grid((16, 20, 20), 12, 8))
    config = TrainConfig(arch="unet", net={"channels": 2, "levels": 1}, patch=8, batch_size=2, epochs=1,
                         steps_per_epoch=1)
    assert train(config, pairs).last.kind == "done"


def test_the_networks_file_runs_alone_for_a_package():
    """Its source ships in bioimage.io packages as napari_qlty_networks.py, where napari-qlty
    is not installed: it may import torch and the standard library only."""
    import ast
    import sys

    import napari_qlty.train.networks as networks

    tree = ast.parse(open(networks.__file__, encoding="utf-8").read())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not [node.module for node in imports if isinstance(node, ast.ImportFrom) and node.level]
    roots = {alias.name.split(".")[0] for node in imports if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in imports if isinstance(node, ast.ImportFrom)}
    assert roots <= {"torch"} | set(sys.stdlib_module_names) | {"__future__"}
