"""On a CUDA device (marked ``gpu``; skipped where there is none): the device's paths give
the CPU's results, gradients flow, out-of-memory halves the batch, and a run killed
while its writer works resumes to the same bytes.

Run them with ``pytest -m gpu`` on a machine with a GPU (``benchmarks/gpu_run.sh``
runs them with the GPU benchmarks as one script).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import zarr

from napari_qlty import Grid, Speed, Weighting, extract, infer, predict, stitch
from napari_qlty.models.batching import remembered_batch_size, run_with_oom_backoff
from napari_qlty.io.prediction import Prediction

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

WEIGHTINGS = [Weighting("border", 0.0), Weighting("border", 0.5), Weighting("gaussian"), Weighting("hann"),
              Weighting("linear", 0.2)]


def conv(ndim=3, c_in=1, c_out=2, seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(layer(c_in, 4, 3, padding=1), torch.nn.ReLU(), layer(4, c_out, 3, padding=1)).eval()


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("on_device", [True, False])
def test_infer_on_cuda_equals_the_cpu(weighting, dtype, on_device):
    """The gather / index_add_ path (volume on the device) and the pinned, prefetched path
    (volume on the host) give the CPU's result."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((2, 1, 30, 41, 37)) * 200).astype(dtype))
    grid = Grid(x.shape[2:], window=(12, 16, 10), step=(8, 10, 7), border=(2, 3, 1))
    model = conv()
    cpu = infer(model, x, grid, weighting, batch_size=5, normalise="percentile")
    gpu = infer(model, x.cuda() if on_device else x, grid, weighting, batch_size=5, device="cuda",
                normalise="percentile")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_stitch_round_trip_and_gradients_on_cuda(ndim):
    shape = (21, 17, 13, 9)[:ndim]
    x = torch.randn((2, 1, *shape), device="cuda", requires_grad=True)
    grid = Grid(shape, window=tuple(min(8, s) for s in shape), step=tuple(min(5, s) for s in shape), border=1)
    y = stitch(extract(x, grid), grid, Weighting("gaussian"))
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-4, atol=1e-4)


def test_gradients_reach_a_models_weights_on_cuda():
    x = torch.randn(2, 1, 40, 33, 29, device="cuda")
    grid = Grid(x.shape[2:], 16, 10, 2)
    net = conv().cuda().train()
    loss = stitch(net(extract(x, grid)), grid, Weighting("hann")).square().mean()
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_real_out_of_memory_halves_the_batch():
    third = torch.cuda.get_device_properties(0).total_memory // 3

    def hungry(batch):  # a third of the card per window: 2 fit, 4 do not
        scratch = torch.empty(len(batch) * third, dtype=torch.uint8, device=batch.device)
        del scratch
        return batch * 2

    x = torch.randn(8, 1, 4, 4, 4, device="cuda")
    assert torch.equal(run_with_oom_backoff(hungry, x), x * 2)
    assert remembered_batch_size(hungry) == 2
    torch.cuda.empty_cache()


@pytest.mark.parametrize("speed", [Speed("bfloat16"), Speed("float16"), Speed(channels_last=True)])
def test_speed_options_on_cuda_stay_within_tolerance(speed):
    x = torch.randn(1, 1, 48, 64, 64)
    grid = Grid(x.shape[2:], 32, 24, 4)
    model = conv()
    ref = infer(model, x, grid, device="cuda").cpu()
    fast = infer(model, x, grid, device="cuda", speed=speed).cpu()
    tolerance = {"bfloat16": 2e-2, "float16": 2e-3, "float32": 1e-4}[speed.precision]
    assert float((fast - ref).abs().max()) <= tolerance * float(ref.abs().max())


def test_predict_on_cuda_killed_while_writing_resumes_to_the_same_bytes(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((1, 1, 96, 80, 72)) * 60000).astype(np.uint16)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=x.shape, chunks=(1, 1, 16, 16, 16), dtype=x.dtype)
    src[...] = x
    model_path = tmp_path / "model.pt"
    torch.jit.script(conv()).save(str(model_path))
    grid = Grid(x.shape[2:], 24, 16, 4)
    kwargs = dict(weighting=Weighting("gaussian"), device="cuda", chunks=(16, 16, 16), region=(16, 32, 32),
                  normalise="percentile")
    from napari_qlty.models import ModelSpec

    predict(ModelSpec(str(model_path)), str(tmp_path / "in.zarr"), grid, tmp_path / "whole.zarr", **kwargs)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.abspath("src")!r})
        from napari_qlty import Grid, Weighting, predict
        from napari_qlty.models import ModelSpec
        predict(ModelSpec({str(model_path)!r}), {str(tmp_path / "in.zarr")!r}, Grid({x.shape[2:]!r}, 24, 16, 4),
                {str(tmp_path / "killed.zarr")!r}, weighting=Weighting("gaussian"), device="cuda",
                chunks=(16, 16, 16), region=(16, 32, 32), normalise="percentile")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    progress = tmp_path / "killed.zarr"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = _regions_done(progress)
        if done >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    predict(ModelSpec(str(model_path)), str(tmp_path / "in.zarr"), grid, progress, **kwargs)
    a = Prediction(tmp_path / "whole.zarr").probabilities()[...]
    b = Prediction(progress).probabilities()[...]
    np.testing.assert_array_equal(a, b)


def _regions_done(path) -> int:
    from napari_qlty.io.prediction import OutputStore, read_meta

    if read_meta(path) is None or "params" not in read_meta(path):
        return 0
    return len(OutputStore(path).finished_regions())
