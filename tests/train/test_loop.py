"""Rounds of the interactive loop: the shared recipe, Train more, the records, bounded by steps."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_qlty import Grid, Weighting, infer
from napari_qlty.core.holdout import hold_out, positions_of
from napari_qlty.core.intensity import Normalisation
from napari_qlty.core.labels import IGNORE
from napari_qlty.core.pairs import clean_pairs
from napari_qlty.data.tomogram import make_tomogram
from napari_qlty.io.rounds import Rounds
from napari_qlty.io.sources import open_source
from napari_qlty.train import Ensemble, TrainConfig, load_checkpoint
from napari_qlty.train.loop import RoundEvent, held_out_scores, iter_round
from napari_qlty.train.metrics import confusion_matrix, f1_scores
from napari_qlty.train.recipe import DEFAULT_RECIPE, Recipe, combine
from napari_qlty.train.trainer import DEFAULT_NETS, TrainEvent

SHAPE = (24, 64, 64)
TINY = {"nets": {"unet": {"channels": 4, "levels": 1, "norm": "batch"}, "msdnet": {"layers": 3, "max_dilation": 2}},
        "patch": 16, "batch_size": 2, "epochs": 2, "steps_per_epoch": 3, "val_samples": 4}
RECIPE = replace(DEFAULT_RECIPE, window=32, step=16, normalisation="percentile")
NAMES = ["background", "filament"]


@pytest.fixture(scope="module")
def tomogram():
    return make_tomogram(SHAPE, seed=1, annotated_fraction=5e-3)


def napari_labels(tomo) -> np.ndarray:
    return (tomo.annotations.astype(np.int16) + 1).astype(np.uint8)


def run(gen, on_event=None):
    events = []
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            return done.value, events
        events.append(event)
        if on_event is not None:
            on_event(event)


def a_round(rounds, tomo, labels, on_event=None, **kwargs):
    options = dict(recipe=RECIPE, class_names=NAMES, overrides=TINY)
    options.update(kwargs)
    return run(iter_round(rounds, open_source(tomo.image, axes="zyx"), labels, **options), on_event)


def test_the_recipe_is_the_demos():
    unet, msd = DEFAULT_RECIPE.configs(ndim=3, classes=2, seed=5)
    assert (unet.arch, msd.arch, unet.seed, msd.seed) == ("unet", "msdnet", 5, 6)
    assert unet.net == DEFAULT_NETS["unet"] and msd.net == DEFAULT_NETS["msdnet"] and unet.planar
    assert (unet.steps, unet.lr, unet.final_lr, unet.class_weight_power, unet.axes, unet.augment) == \
        (500, 3e-3, 1e-4, 0.5, (0,), True)
    more = DEFAULT_RECIPE.configs(ndim=2, classes=3, more=True)[0]
    assert more.lr == DEFAULT_RECIPE.more_lr and more.steps == 150 and not more.planar
    assert Recipe.from_json(DEFAULT_RECIPE.to_json()) == DEFAULT_RECIPE
    # inference settings are clipped to the image
    s = DEFAULT_RECIPE.inference((64, 192, 20))
    assert s == {"window": [16, 128, 20], "step": [12, 108, 20], "border": [2, 10, 9], "weighting": "border",
                 "border_weight": 0.0}  # thin along z: the networks are 2.5D
    grid = DEFAULT_RECIPE.inference_grid((64, 192, 20))
    assert grid.counts == (5, 2, 1)
    assert replace(DEFAULT_RECIPE, infer_depth=None).inference_grid((64, 192, 20)).counts == (1, 2, 1)
    assert DEFAULT_RECIPE.inference((12, 50))["window"] == [12, 50]  # 2D: no depth


def test_the_learning_rate_follows_steps_or_time_whichever_ends_first():
    c = TrainConfig(epochs=2, steps_per_epoch=50, lr=1e-2, final_lr=1e-4)
    assert c.learning_rate(0) == pytest.approx(1e-2)
    assert c.learning_rate(50) == pytest.approx((1e-2 + 1e-4) / 2)
    assert c.learning_rate(100) == pytest.approx(1e-4)
    timed = replace(c, max_seconds=10.0)
    assert timed.learning_rate(0, elapsed=5.0) == pytest.approx((1e-2 + 1e-4) / 2)  # half the time: half way
    assert timed.learning_rate(75, elapsed=5.0) == pytest.approx(c.learning_rate(75))  # steps ahead of time
    assert timed.learning_rate(1, elapsed=99.0) == pytest.approx(1e-4)
    assert replace(c, max_seconds=0.0).learning_rate(0) == pytest.approx(1e-4)


def test_a_round_trains_scores_and_records_everything(tmp_path, tomogram):
    labels = napari_labels(tomogram)
    painted = labels.copy()
    rounds = Rounds.open(tmp_path / "t.rounds", SHAPE, image="tomogram")

    def paint_meanwhile(event):  # strokes added while the round trains are not in it
        if isinstance(event, TrainEvent) and event.kind == "start":
            labels[:, :4, :4] = 2

    result, events = a_round(rounds, tomogram, labels, on_event=paint_meanwhile, seed=3)
    r = result.round
    assert [r.number for r in rounds.rounds()] == [1] and r.parent is None and r.attrs["kind"] == "train"
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(r.labels_path))[...], painted)
    kinds = [e.kind for e in events if isinstance(e, RoundEvent)]
    assert kinds == ["pairs", "scores"]
    assert {e.member for e in events if isinstance(e, TrainEvent)} == {"unet", "msdnet"}
    a = r.attrs
    assert [m["arch"] for m in a["members"]] == ["unet", "msdnet"] and all(m["steps"] == 6 for m in a["members"])
    assert a["pairs"]["validation"] >= 1 and a["pairs"]["held_out_voxels"] > 0
    assert set(a["scores"]["per_class"]) == set(NAMES) and 0 <= a["scores"]["val_f1"] <= 1
    assert a["labelled"] == {n: int((painted == k + 1).sum()) for k, n in enumerate(NAMES)}
    assert a["recipe"] == RECIPE.to_json() and a["seed"] == 3 and a["grid"]["window"] == [24, 32, 32]
    assert a["inference"]["window"] == [16, 64, 64]  # thin along z (2.5D networks)
    # the recorded checkpoint is the model, and it applies its normalisation by itself
    model = result.model
    assert isinstance(model, Ensemble) and model.napari_qlty_normalisation.mode == "percentile"
    loaded = load_checkpoint(r.model_path)
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        np.testing.assert_allclose(torch.softmax(model(x), 1).sum(1).numpy(), 1.0, atol=1e-5)
    assert loaded.napari_qlty_info["inference"] == a["inference"]
    # the held-out score is the model's F1 on the held-out windows
    view = torch.from_numpy(painted.astype(np.int64) - 1)[None]
    grid = RECIPE.training_grid(SHAPE)
    pairs = clean_pairs(torch.from_numpy(tomogram.image)[None, None], view, grid)
    split = hold_out(pairs.labels, positions_of(pairs.indices, pairs.origins, len(grid)), RECIPE.validation, 3)
    fitted = Normalisation("percentile").fit(tomogram.image[None, None])
    confusion = np.zeros((2, 2), np.int64)
    with torch.no_grad():
        for j in split.val:
            x = fitted.apply(pairs.images[j : j + 1].float())
            confusion += confusion_matrix(pairs.labels[j], model(x).argmax(1)[0], 2, ignore_label=IGNORE)
    scores = f1_scores(confusion)
    assert a["scores"]["val_f1"] == pytest.approx(float(np.nanmean(scores)), abs=1e-4)


def test_train_more_continues_a_copy_and_records_its_parent(tmp_path, tomogram):
    labels = napari_labels(tomogram)
    rounds = Rounds.open(tmp_path / "t.rounds", SHAPE)
    first, _ = a_round(rounds, tomogram, labels)
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    labels[5, 10:20, 10:12] = 2  # new strokes
    second, events = a_round(rounds, tomogram, labels, parent=first.round, parent_model=first.model)
    r = second.round
    assert (r.number, r.parent, r.attrs["kind"]) == (2, 1, "train more")
    more = RECIPE.configs(ndim=3, classes=2, more=True, **TINY)
    assert [m["steps"] for m in r.attrs["members"]] == [c.steps for c in more]
    starts = [e for e in events if isinstance(e, TrainEvent) and e.kind == "step"]
    assert starts and max(e.lr for e in starts) <= RECIPE.more_lr + 1e-12
    # the parent's model is as it was recorded; the new one moved on from it
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in second.model.state_dict().items())
    assert second.model is not first.model
    # and round 1 still reloads as recorded
    x = torch.randn(1, 1, 6, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(rounds.get(1).model_path)(x), first.model(x))


def test_one_class_is_refused_with_its_name_and_nothing_is_left(tmp_path, tomogram):
    labels = np.where(napari_labels(tomogram) == 1, 1, 0).astype(np.uint8)
    rounds = Rounds.open(tmp_path / "t.rounds", SHAPE)
    with pytest.raises(ValueError, match="the labels hold only 'background': training needs labels of at least two"):
        a_round(rounds, tomogram, labels)
    assert rounds.rounds() == [] and [p.name for p in rounds.path.iterdir()] == ["zarr.json"]


def test_a_stop_before_the_first_step_records_nothing(tmp_path, tomogram):
    rounds = Rounds.open(tmp_path / "t.rounds", SHAPE)
    with pytest.raises(ValueError, match="stopped before its first step"):
        a_round(rounds, tomogram, napari_labels(tomogram), stop=lambda: True)
    assert [p.name for p in rounds.path.iterdir()] == ["zarr.json"]


def test_a_stop_keeps_the_networks_trained_so_far(tmp_path, tomogram):
    rounds = Rounds.open(tmp_path / "t.rounds", SHAPE)
    steps = []

    def count(event):
        if isinstance(event, TrainEvent) and event.kind == "step":
            steps.append(event)

    stop = lambda: len(steps) >= 2  # noqa: E731 - two steps of the U-Net, then Stop
    result, _ = run(iter_round(rounds, open_source(tomogram.image, axes="zyx"), napari_labels(tomogram),
                               recipe=replace(RECIPE, normalisation="none"), class_names=NAMES, overrides=TINY,
                               stop=stop), count)
    members = result.round.attrs["members"]
    assert [(m["arch"], m["steps"], m["stopped"]) for m in members] == [("unet", 2, True)]
    assert not isinstance(result.model, Ensemble)  # one network: the round's model is that network
    assert load_checkpoint(result.round.model_path) is not None


def test_held_out_scores_on_a_known_model():
    class Threshold(torch.nn.Module):
        def forward(self, x):
            return torch.cat([-x, x], 1)  # class 1 where x > 0

    images = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]]])[:, :, None]  # (1, 1, 1, 2, 2)
    labels = torch.tensor([[[[0, 1], [0, IGNORE]]]])  # one right 1, one right 0, one wrong 0
    f1, per_class = held_out_scores(Threshold(), images, labels, 2, Normalisation().fit(images))
    assert per_class == pytest.approx([2 / 3, 2 / 3]) and f1 == pytest.approx(2 / 3)
    assert math.isnan(held_out_scores(Threshold(), images, torch.full_like(labels, IGNORE), 2,
                                      Normalisation().fit(images))[0])


def test_combine_keeps_one_network_as_it_is():
    net = torch.nn.Conv2d(1, 2, 1)
    assert combine([net]) is net
    both = combine([net, torch.nn.Conv2d(1, 2, 1)])
    assert isinstance(both, Ensemble) and both.output == "log"


def test_train_more_continues_a_round_that_stopped_after_its_first_network(tmp_path, tomogram):
    rounds = Rounds.open(tmp_path / "t.rounds", SHAPE)
    steps = []
    stopped, _ = run(iter_round(rounds, open_source(tomogram.image, axes="zyx"), napari_labels(tomogram),
                                recipe=RECIPE, class_names=NAMES, overrides=TINY, stop=lambda: len(steps) >= 1),
                     lambda e: steps.append(e) if isinstance(e, TrainEvent) and e.kind == "step" else None)
    more, _ = a_round(rounds, tomogram, napari_labels(tomogram), parent=stopped.round, parent_model=stopped.model)
    assert [m["arch"] for m in more.round.attrs["members"]] == ["unet"]
    assert more.round.parent == stopped.round.number


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_thin_inference_windows_give_the_voxels_deep_ones_give(dtype):
    """A 2.5D network reaches ``context`` slices along z: windows 16 deep with a z border of
    the context (weight 0) give what one window through the whole depth gives."""
    from napari_qlty.train.networks import planar

    torch.manual_seed(0)
    model = planar("unet", context=DEFAULT_RECIPE.configs(ndim=3, classes=2)[0].context,
                   channels=2, levels=1).eval()
    shape = (40, 24, 20)
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 100, shape).astype(dtype))[None, None]
    thin = DEFAULT_RECIPE.inference(shape)
    deep = replace(DEFAULT_RECIPE, infer_depth=None).inference(shape)
    assert thin["window"][0] < shape[0] == deep["window"][0]
    outputs = []
    for s in (thin, deep):
        grid = Grid(shape, window=s["window"], step=s["step"], border=s["border"])
        with torch.no_grad():
            outputs.append(infer(model, image, grid, Weighting("border", border_weight=s["border_weight"]),
                                 batch_size=3))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
