"""Out-of-core prediction: exact against the in-memory path, resumable, race-free."""

from __future__ import annotations

import copy
import itertools
import json
import os
import socket
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr

from napari_qlty import Grid, Weighting, infer
from napari_qlty.models import ModelSpec
from napari_qlty import iter_predict, predict
from napari_qlty.run.regions import Regions, plan_region_size, region_cost
from napari_qlty.io import labels_store
from napari_qlty.io.prediction import Prediction, StoreError, read_meta


def all_levels(path) -> dict:
    """Every array of a prediction's pyramids, by path."""
    store = Prediction(path)
    return {store.array_path(kind, level): store.array(kind, level)[...]
            for kind in ("probabilities", "labels") if store.layout[kind] for level in range(store.levels)}


def conv_model(c_in=1, c_out=2, ndim=3, seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(c_in, c_out, 3, padding=1)).eval()


def write_zarr(path, array, chunks):
    arr = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype)
    arr[...] = array
    return arr


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 37, 45, 29)).astype(np.float32)
    return x, write_zarr(tmp_path / "in.zarr", x, (1, 1, 16, 16, 16))


@pytest.mark.parametrize("region", [(16, 16, 16), (32, 16, 16), (48, 48, 32)])
@pytest.mark.parametrize("weighting", [Weighting("border", 0.0), Weighting("gaussian"), Weighting("border", 0.3)])
def test_predict_equals_in_memory(tmp_path, volume, region, weighting):
    x, src = volume
    grid = Grid(x.shape[2:], window=(12, 16, 10), step=(8, 10, 7), border=(2, 3, 1))
    model = conv_model()
    out = tmp_path / "out.zarr"
    # the region is pinned: the planner's choice rests on a measured (so noisy) batch cost
    events = list(iter_predict(model, src, grid, out, weighting=weighting, batch_size=3, device="cpu",
                               region=region, chunks=(16, 16, 16)))
    assert events[-1].kind == "done"
    expected = infer(model, torch.from_numpy(x), grid, weighting).numpy()
    got = Prediction(out)
    np.testing.assert_allclose(got.probabilities()[...], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.labels()[...], expected.argmax(1).astype(np.uint8))
    assert read_meta(out)["complete"] is True
    assert not (out / "napari_qlty" / "spills").exists()
    # every window ran once
    assert events[-1].windows_done == len(grid)


def test_every_window_owned_once():
    grid = Grid((37, 45, 29), window=(12, 16, 10), step=(9, 11, 7))
    for size in [(8, 8, 8), (16, 16, 16), (40, 48, 32)]:
        regions = Regions(grid, size)
        owned = np.concatenate([regions.owned(r) for r in np.ndindex(*regions.counts)])
        assert sorted(owned.tolist()) == list(range(len(grid)))
        for r in np.ndindex(*regions.counts):
            for q in regions.receivers(r):
                assert r in regions.senders(q)


def test_threads_equal_sequential(tmp_path, volume):
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    model = conv_model()
    # the same regions in both runs: float sums added in another order differ in the last bit
    kwargs = dict(weighting=Weighting("border", 0.0), device="cpu", chunks=(8, 8, 8), region=(8, 8, 8))
    predict(model, src, grid, tmp_path / "a.zarr", **kwargs)
    predict(model, src, grid, tmp_path / "b.zarr", workers=2, **kwargs)
    a = Prediction(tmp_path / "a.zarr").probabilities()[...]
    b = Prediction(tmp_path / "b.zarr").probabilities()[...]
    np.testing.assert_array_equal(a, b)


def test_refuses_other_data_and_other_parameters(tmp_path, volume):
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    model = conv_model()
    other = tmp_path / "other.zarr"
    write_zarr(other, np.ones((4, 4), np.float32), (4, 4))
    labels_store.create(tmp_path / "labels.zarr", x.shape[2:], {1: "a"})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("years of work")
    for path, what in ((other, "a folder with 2 entries"), (tmp_path / "labels.zarr", "a napari-qlty sparse-labels store, not a napari-qlty prediction"),
                       (tmp_path / "notes", r"a folder with 1 entry \(thesis.txt\)")):
        for overwrite in (False, True):  # overwrite replaces only predictions of ours
            with pytest.raises(StoreError, match=f"holds {what}.*left untouched"):
                predict(model, src, grid, path, device="cpu", overwrite=overwrite)
    assert np.all(zarr.open_array(str(other))[...] == 1)
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "years of work"
    assert labels_store.read_meta(tmp_path / "labels.zarr") is not None

    out = tmp_path / "out.zarr"
    predict(model, src, grid, out, device="cpu")
    with pytest.raises(StoreError, match=r"other parameters.*\(step: stored 8, now 7\)") as info:
        predict(model, src, Grid(x.shape[2:], window=12, step=7, border=2), out, device="cpu")
    assert info.value.remedy == "overwrite"
    events = list(iter_predict(model, src, grid, out, device="cpu"))
    assert events[-1].message.endswith("already complete")
    predict(model, src, Grid(x.shape[2:], window=12, step=7, border=2), out, device="cpu", overwrite=True)
    (tmp_path / "empty.zarr").mkdir()  # an empty folder is fine to fill
    predict(model, src, grid, tmp_path / "empty.zarr", device="cpu")


def test_one_run_per_store(tmp_path, volume):
    """A second run on a store that a live process is writing is refused; a lock left by a
    killed run is taken over."""
    from napari_qlty.io.locks import LOCK_NAME, StoreLock

    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    out = tmp_path / "out.zarr"
    events = iter_predict(conv_model(), src, grid, out, device="cpu", region=(16, 16, 16), chunks=(16, 16, 16))
    assert next(events).kind == "start"  # the first run holds the store now
    with pytest.raises(StoreError, match=rf"is being written by process {os.getpid()}"):
        predict(conv_model(), src, grid, out, device="cpu", region=(16, 16, 16), chunks=(16, 16, 16))
    with pytest.raises(StoreError, match="being written"):  # nor can it be replaced meanwhile
        predict(conv_model(seed=3), src, grid, out, device="cpu", overwrite=True)
    events.close()  # the consumer stops: the lock goes
    assert not (out / LOCK_NAME).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert predict(conv_model(), src, grid, out, device="cpu", region=(16, 16, 16),
                   chunks=(16, 16, 16)).kind == "done"
    assert not (out / LOCK_NAME).exists()
    with StoreLock(out):
        assert (out / LOCK_NAME).exists()


def test_bad_model_output_names_both_shapes(tmp_path, volume):
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=9)
    bad = torch.nn.Conv3d(1, 2, 3)  # no padding: output is smaller than the window
    with pytest.raises(ValueError, match=r"12, 12, 12.*10, 10, 10|10, 10, 10.*12, 12, 12"):
        predict(bad, src, grid, tmp_path / "o.zarr", device="cpu")


def test_nan_model_output_is_an_error(tmp_path, volume):
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=9)

    class NaNModel(torch.nn.Module):
        def forward(self, b):
            return b * float("nan")

    with pytest.raises(ValueError, match="NaN"):
        predict(NaNModel(), src, grid, tmp_path / "o.zarr", device="cpu")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from napari_qlty import Grid, Weighting
    from napari_qlty.models import ModelSpec
    from napari_qlty import iter_predict
    src, model, out, slow = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    grid = Grid((37, 45, 29), window=12, step=8, border=2)
    for event in iter_predict(ModelSpec(model), src, grid, out, weighting=Weighting("border", 0.0),
                              device="cpu", chunks=(8, 8, 8), region=(8, 8, 8), levels=2):
        print(event.kind, event.regions_done, event.regions_total, flush=True)
        time.sleep(slow)
    """
)


def test_resume_after_kill_9_is_identical(tmp_path, volume):
    x, src = volume
    model = conv_model()
    model_path = tmp_path / "model.pt"
    torch.jit.script(model).save(str(model_path))
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    ref = tmp_path / "ref.zarr"
    out = tmp_path / "out.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, str(script), str(tmp_path / "in.zarr"), str(model_path), str(ref), "0"],
                   check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "in.zarr"), str(model_path), str(out),
                             "0.05"], env=env, stdout=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stdout:
        if line.startswith("region"):
            seen += 1
            if seen == 7:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    meta = read_meta(out)
    assert meta is not None and meta["complete"] is False
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "in.zarr"), str(model_path), str(out), "0"],
                          check=True, env=env, capture_output=True, text=True)
    first = done.stdout.splitlines()[0].split()
    assert first[0] == "start" and int(first[1]) >= 6  # finished regions were skipped
    a, b = all_levels(ref), all_levels(out)
    assert len(a) == 4 and a.keys() == b.keys()  # probabilities and labels, 2 levels each
    for key in a:  # the pyramid too, byte for byte
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_distributed_cluster_equals_local(tmp_path, volume):
    distributed = pytest.importorskip("distributed")
    x, src = volume
    model_path = tmp_path / "model.pt"
    torch.jit.script(conv_model()).save(str(model_path))
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    kwargs = dict(weighting=Weighting("gaussian"), device="cpu", chunks=(8, 8, 8), region=(16, 16, 16), levels=2)
    # dask's worker processes run torch on one thread; a conv on two threads may round
    # differently, so the local reference uses one thread too: the stitching itself is exact
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predict(ModelSpec(str(model_path)), str(tmp_path / "in.zarr"), grid, tmp_path / "local.zarr", **kwargs)
    finally:
        torch.set_num_threads(threads)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        predict(ModelSpec(str(model_path)), str(tmp_path / "in.zarr"), grid, tmp_path / "cluster.zarr",
                scheduler=client, **kwargs)
    a, b = all_levels(tmp_path / "local.zarr"), all_levels(tmp_path / "cluster.zarr")
    assert len(a) == 4 and a.keys() == b.keys()
    for key in a:  # every level of both pyramids
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_plan_region_size_respects_budget():
    grid = Grid((236, 720, 510), window=128, step=108, border=10)
    size = plan_region_size(grid, (64, 64, 64), 1, 2, 100 << 20, 512 << 20)
    assert all(s % 64 == 0 for s in size)
    assert region_cost(grid, size, 1, 2) + (100 << 20) <= 512 << 20
    with pytest.raises(ValueError, match="memory budget 64 MiB is too small.*batch"):
        plan_region_size(grid, (64, 64, 64), 1, 2, 100 << 20, 64 << 20)


def test_out_of_memory_halves_the_batch(tmp_path, volume):
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    conv = conv_model()

    class Picky(torch.nn.Module):
        """Runs out of memory on more than one window at a time."""

        def forward(self, b):
            if b.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return conv(b)

    kwargs = dict(weighting=Weighting("border", 0.0), device="cpu", batch_size=4)
    predict(Picky(), src, grid, tmp_path / "picky.zarr", **kwargs)
    predict(conv, src, grid, tmp_path / "plain.zarr", **kwargs)
    a = Prediction(tmp_path / "picky.zarr").probabilities()[...]
    b = Prediction(tmp_path / "plain.zarr").probabilities()[...]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_region_cap_and_cancel_then_resume(tmp_path, volume):
    from napari_qlty.run import Cancelled

    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    model = conv_model()
    out = tmp_path / "out.zarr"
    kwargs = dict(weighting=Weighting("border", 0.0), device="cpu", chunks=(8, 8, 8), region=(16, 16, 16))
    regions_seen = []
    with pytest.raises(Cancelled):
        for event in iter_predict(model, src, grid, out, cancelled=lambda: len(regions_seen) >= 3, **kwargs):
            if event.kind == "region":
                regions_seen.append(event.region)
                assert all(b - a <= 16 for a, b in zip(event.start, event.stop))
    meta = read_meta(out)
    assert meta["layout"]["region"] == [16, 16, 16] and meta["complete"] is False
    events = list(iter_predict(model, src, grid, out, **kwargs))
    # the region being written when the run stopped is finished and reported too
    assert 3 <= len(regions_seen) <= 4 and events[0].regions_done == len(regions_seen)
    expected = infer(model, torch.from_numpy(x), grid, Weighting("border", 0.0)).numpy()
    np.testing.assert_allclose(Prediction(out).probabilities()[...], expected, rtol=1e-5, atol=1e-5)


def test_retrained_module_is_not_resumed_into(tmp_path, volume):
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    out = tmp_path / "out.zarr"
    predict(conv_model(seed=0), src, grid, out, device="cpu")
    predict(conv_model(seed=0), src, grid, out, device="cpu")  # same weights: complete, fine
    with pytest.raises(StoreError, match="model"):
        predict(conv_model(seed=1), src, grid, out, device="cpu")


def test_callers_module_stays_where_it_is(tmp_path, volume):
    from napari_qlty.core.inference import for_inference

    model = conv_model()
    assert for_inference(model, torch.device("cpu")) is model  # eval mode, right device: as it is
    meta_device = torch.device("meta")
    moved = for_inference(model, meta_device)
    assert moved is not model and next(model.parameters()).device.type == "cpu"
    assert next(moved.parameters()).device.type == "meta"


def test_predict_leaves_a_training_mode_batchnorm_model_unchanged(tmp_path, volume):
    """The probes and the run use a private copy in eval mode: the caller's running
    statistics, training flag and fingerprint stay as they were, so a rerun resumes."""
    from napari_qlty.run.runner import model_fingerprint

    x, src = volume
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.BatchNorm3d(2))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fingerprint = model_fingerprint(net)
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    predict(net, src, grid, tmp_path / "out.zarr", device="cpu", batch_size="auto")
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model_fingerprint(net) == fingerprint
    expected = infer(net.eval(), torch.from_numpy(x), grid).numpy()
    np.testing.assert_allclose(Prediction(tmp_path / "out.zarr").probabilities()[...], expected,
                               rtol=1e-5, atol=1e-5)


def test_batchnorm_module_fingerprint():
    from napari_qlty.run.runner import model_fingerprint

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    strided = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    # the same weights in another memory layout (BatchNorm's buffers included) are the same model
    assert model_fingerprint(strided) == model_fingerprint(net)
    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    assert model_fingerprint(other) != model_fingerprint(net)
    # a forward pass in training mode moves the running statistics: another model now
    before = model_fingerprint(net)
    net.train()(torch.randn(2, 1, 4, 4, 4))
    assert model_fingerprint(net) != before


def test_one_channel_models_get_labels_by_threshold(tmp_path, volume):
    """argmax over one channel is always 0: a one-channel output is thresholded instead."""
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    one = conv_model(c_out=1)
    predict(one, src, grid, tmp_path / "raw.zarr", weighting=Weighting("border", 0.0), device="cpu")
    raw = Prediction(tmp_path / "raw.zarr")
    logits = raw.probabilities()[...]
    np.testing.assert_allclose(logits, infer(one, torch.from_numpy(x), grid, Weighting("border", 0.0)).numpy(),
                               rtol=1e-5, atol=1e-5)
    labels = raw.labels()[...]
    # the rule is sigmoid >= 0.5 in float32 (a logit of -1e-9 rounds to 0.5: labelled)
    np.testing.assert_array_equal(labels, (torch.sigmoid(torch.from_numpy(logits[:, 0])) >= 0.5).numpy())
    assert np.mean(labels == (logits[:, 0] >= 0)) > 0.999
    assert 0 < labels.mean() < 1
    predict(one, src, grid, tmp_path / "p.zarr", weighting=Weighting("border", 0.0), device="cpu",
            postprocess="sigmoid", threshold=0.8)
    probs = Prediction(tmp_path / "p.zarr").probabilities()[...]
    np.testing.assert_array_equal(Prediction(tmp_path / "p.zarr").labels()[...],
                                  (probs[:, 0] >= 0.8).astype(np.uint8))
    with pytest.raises(ValueError, match="one output channel, whose softmax is always 1"):
        predict(one, src, grid, tmp_path / "s.zarr", device="cpu", postprocess="softmax")


def test_a_model_failing_mid_run_leaves_the_regions_written_so_far_and_resumes(tmp_path, volume):
    """The pipelined run writes the region in flight before the error surfaces; nothing
    looks finished, and the rerun does only what is left, to the same bytes."""
    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    conv = conv_model()

    class Flaky(torch.nn.Module):
        """The conv, failing on its 25th call (probes included) while ``broken``."""

        def __init__(self):
            super().__init__()
            self.conv, self.calls, self.broken = conv, 0, True

        def forward(self, batch):
            self.calls += 1
            if self.broken and self.calls == 25:
                raise RuntimeError("the model broke")
            return self.conv(batch)

    flaky = Flaky().eval()
    kwargs = dict(weighting=Weighting("gaussian"), device="cpu", chunks=(8, 8, 8), region=(16, 16, 16), batch_size=2)
    seen = []
    with pytest.raises(RuntimeError, match="the model broke"):
        for event in iter_predict(flaky, src, grid, tmp_path / "out.zarr", **kwargs):
            if event.kind == "region":
                seen.append(event.region)
    assert read_meta(tmp_path / "out.zarr")["complete"] is False
    flaky.broken = False
    events = list(iter_predict(flaky, src, grid, tmp_path / "out.zarr", **kwargs))
    assert events[0].regions_done == len(seen) > 0
    predict(flaky, src, grid, tmp_path / "whole.zarr", **kwargs)
    a = Prediction(tmp_path / "whole.zarr").probabilities()[...]
    b = Prediction(tmp_path / "out.zarr").probabilities()[...]
    np.testing.assert_array_equal(a, b)


def test_the_view_runs_first_and_the_result_is_the_same_in_any_order(tmp_path, volume):
    """Regions meeting the view come first (after the senders they wait for); a view that
    moves reorders what is pending; stopping after the view and resuming, or running in
    view order to the end, gives the bytes of a run in C order."""
    from napari_qlty.run import View

    x, src = volume
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    model = conv_model()
    kwargs = dict(weighting=Weighting("gaussian"), device="cpu", chunks=(8, 8, 8), region=(8, 8, 8))
    predict(model, src, grid, tmp_path / "c.zarr", **kwargs)
    reference = Prediction(tmp_path / "c.zarr").probabilities()[...]

    views = [View((24, 30, 20), (30, 37, 29)), View((0, 0, 0), (5, 5, 5))]
    first, order = [], []
    events = list(iter_predict(model, src, grid, tmp_path / "v.zarr", view=lambda: views[0],
                               view_only=True, **kwargs))
    assert events[-1].kind == "paused" and "the view is done" in events[-1].message
    done = [e.region for e in events if e.kind == "region"]
    in_view = {(0, *r) for r in itertools.product(range(3, 4), range(3, 5), range(2, 4))}
    assert in_view <= set(done) and len(done) < events[-1].regions_total
    assert read_meta(tmp_path / "v.zarr")["complete"] is False
    np.testing.assert_array_equal(Prediction(tmp_path / "v.zarr").probabilities()[:, :, 24:30, 30:37, 20:29],
                                  reference[:, :, 24:30, 30:37, 20:29])

    def moving():  # the user looks elsewhere after two regions
        return views[0] if len(order) < 2 else views[1]

    for event in iter_predict(model, src, grid, tmp_path / "v.zarr", view=moving, **kwargs):
        if event.kind == "region":
            order.append(event.region)
            first.append(event.region)
    assert (0, 0, 0, 0) in order[:6]
    assert events[-1].regions_done + len(order) == events[-1].regions_total
    np.testing.assert_array_equal(Prediction(tmp_path / "v.zarr").probabilities()[...], reference)
    assert read_meta(tmp_path / "v.zarr")["complete"] is True

    with pytest.raises(ValueError, match="use workers=1 and no scheduler with view"):
        predict(model, src, grid, tmp_path / "w.zarr", view=lambda: views[0], workers=2, **kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_uncertainty_is_written_out_of_core_as_infer_gives_it(tmp_path, dtype):
    """Out of core, in regions, with a pyramid: the uncertainty image equals infer's, and
    its coarse levels are its block means; an ensemble adds its members' disagreement."""
    from napari_qlty.train.ensemble import Ensemble

    rng = np.random.default_rng(1)
    x = (rng.random((1, 1, 40, 36, 30)) * 100).astype(dtype)
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    for model, kinds in ((conv_model(), ["windows", "entropy"]),
                         (Ensemble([conv_model(seed=0), conv_model(seed=1)]).eval(), ["windows", "members", "entropy"])):
        out = tmp_path / f"{len(kinds)}.zarr"
        predict(model, x, grid, out, weighting=Weighting("gaussian"), device="cpu", chunks=(8, 8, 8),
                region=(16, 16, 16), uncertainty=True, levels=2, normalise="percentile")
        values, unsure = infer(model, x, grid, Weighting("gaussian"), uncertainty=True, normalise="percentile")
        store = Prediction(out)
        assert store.layout["uncertainty"] == kinds
        np.testing.assert_allclose(store.probabilities()[...], values.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(store.uncertainty()[...], unsure.numpy(), rtol=1e-4, atol=1e-5)
        coarse = store.uncertainty(1)[...]
        full = store.uncertainty()[...]
        np.testing.assert_allclose(coarse[..., 0, 0, 0], full[..., :2, :2, :2].mean(axis=(-3, -2, -1)), rtol=1e-5)
        with pytest.raises(StoreError, match="uncertainty"):
            predict(model, x, grid, out, weighting=Weighting("gaussian"), device="cpu", chunks=(8, 8, 8),
                    region=(16, 16, 16), levels=2, normalise="percentile")
