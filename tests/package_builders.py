"""bioimage.io packages built on the spot, the way other tools write them: a state dict and
the Python file of its architecture (and TorchScript), test tensors computed the way the
Model Zoo defines them (the whole test input through the preprocessing, the network and the
postprocessing, in numpy, independently of napari-qlty), and a description in format 0.4
or 0.5. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml

ARCHITECTURE = '''\
import torch
from torch import nn


class SmallNet(nn.Module):
    """Two 3x3 convolutions: every output voxel sees 2 voxels along each axis."""

    def __init__(self, dims=2, in_channels=1, classes=2, width=4, channels_last=False):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.a = conv(in_channels, width, 3, padding=1)
        self.b = conv(width, classes, 3, padding=1)
        self.channels_last = channels_last

    def forward(self, x):
        if self.channels_last:
            x = x.movedim(-1, 1)
        y = self.b(torch.relu(self.a(x)))
        return y.movedim(1, -1) if self.channels_last else y
'''

REACH = 2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def network(kwargs: dict, seed: int = 0, source: str = ARCHITECTURE):
    """The architecture, built from its source text (as a consumer would), with seeded weights."""
    module = types.ModuleType(f"arch_{sha(source.encode())[:8]}")
    sys.modules[module.__name__] = module
    exec(compile(source, "arch.py", "exec"), module.__dict__)
    torch.manual_seed(seed)
    return module.SmallNet(**kwargs).eval()


# -- the Model Zoo's processing, in numpy, over the whole tensor -------------------------------------
def _reduce(x: np.ndarray, per_channel_axis: int | None):
    """Axes to reduce over: all but the batch and, when statistics are per channel, the channel."""
    keep = {0} | ({per_channel_axis} if per_channel_axis is not None else set())
    return tuple(a for a in range(x.ndim) if a not in keep)


def apply_processing(x: np.ndarray, steps: list[dict], channel_axis: int | None, reference=None) -> np.ndarray:
    """steps: [{"op": ..., "per_channel": bool, ...}] applied as bioimage.io defines them."""
    x = x.astype(np.float64)
    for s in steps:
        op = s["op"]
        axis = channel_axis if s.get("per_channel") else None
        seen = reference if s.get("of_input") else x
        red = _reduce(seen, axis)
        if op == "scale_range":
            lo = np.percentile(seen, s.get("low", 0.0), axis=red, keepdims=True)
            hi = np.percentile(seen, s.get("high", 100.0), axis=red, keepdims=True)
            x = (x - lo) / (hi - lo + s.get("eps", 1e-6))
        elif op == "zero_mean_unit_variance":
            x = (x - seen.mean(axis=red, keepdims=True)) / (seen.std(axis=red, keepdims=True) + s.get("eps", 1e-6))
        elif op == "fixed_zero_mean_unit_variance":
            x = (x - s["mean"]) / (s["std"] + 1e-6)
        elif op == "scale_linear":
            x = x * s["gain"] + s["offset"]
        elif op == "clip":
            x = np.clip(x, s.get("min", -np.inf), s.get("max", np.inf))
        elif op == "binarize":
            x = (x > s["threshold"]).astype(np.float64)
        elif op == "sigmoid":
            x = 1.0 / (1.0 + np.exp(-x))
        elif op == "softmax":
            e = np.exp(x - x.max(axis=channel_axis, keepdims=True))
            x = e / e.sum(axis=channel_axis, keepdims=True)
        else:
            raise ValueError(op)
    return x


# -- descriptions -------------------------------------------------------------------------------------
def _v05_step(s: dict, axes: str) -> dict:
    ids = {"b": "batch", "c": "channel", "z": "z", "y": "y", "x": "x"}
    reduced = [ids[a] for a in axes if a != "b" and not (a == "c" and s.get("per_channel"))]
    op = s["op"]
    if op == "scale_range":
        kw = {"axes": reduced, "min_percentile": s.get("low", 0.0), "max_percentile": s.get("high", 100.0),
              "eps": s.get("eps", 1e-6)}
        if s.get("of_input"):
            kw["reference_tensor"] = "raw"
        return {"id": op, "kwargs": kw}
    if op == "zero_mean_unit_variance":
        return {"id": op, "kwargs": {"axes": reduced, "eps": s.get("eps", 1e-6)}}
    if op == "scale_linear":
        return {"id": op, "kwargs": {"gain": s["gain"], "offset": s["offset"]}}
    if op == "clip":
        return {"id": op, "kwargs": {k: s[k] for k in ("min", "max") if k in s}}
    if op == "binarize":
        return {"id": op, "kwargs": {"threshold": s["threshold"]}}
    return {"id": op}


def _v04_step(s: dict, axes: str) -> dict:
    reduced = "".join(a for a in axes if a not in "bc") + ("" if s.get("per_channel") else "c")
    op = s["op"]
    if op == "scale_range":
        kw = {"mode": "per_sample", "axes": reduced, "min_percentile": s.get("low", 0.0),
              "max_percentile": s.get("high", 100.0), "eps": s.get("eps", 1e-6)}
        if s.get("of_input"):
            kw["reference_tensor"] = "raw"
        return {"name": op, "kwargs": kw}
    if op == "zero_mean_unit_variance":
        return {"name": op, "kwargs": {"mode": "per_sample", "axes": reduced, "eps": s.get("eps", 1e-6)}}
    if op == "scale_linear":
        return {"name": op, "kwargs": {"axes": reduced, "gain": s["gain"], "offset": s["offset"]}}
    if op == "clip":
        return {"name": op, "kwargs": {k: s[k] for k in ("min", "max") if k in s}}
    if op == "binarize":
        return {"name": op, "kwargs": {"threshold": s["threshold"]}}
    return {"name": op}


def build_package(
    where: Path,
    *,
    fmt: str = "0.5",
    dims: int = 2,
    weights=("pytorch_state_dict", "torchscript"),
    preprocessing=({"op": "scale_range", "low": 1.0, "high": 99.8},),
    postprocessing=({"op": "softmax"},),
    test_shape=(1, 1, 48, 40),
    valid=(16, 8),
    halo: int = REACH,
    channels_last: bool = False,
    classes: int = 2,
    zipped: bool = False,
    source: str = ARCHITECTURE,
    seed: int = 0,
    tolerance: dict | None = None,
) -> Path:
    """A package as another tool writes it; returns its folder, or its .zip when ``zipped``."""
    where = Path(where)
    folder = where / "package" if zipped else where
    folder.mkdir(parents=True, exist_ok=True)
    channels = test_shape[1]
    kwargs = {"dims": dims, "in_channels": channels, "classes": classes, "channels_last": channels_last}
    net = network(kwargs, seed, source)
    space = "zyx"[-dims:]
    axes = "b" + (space + "c" if channels_last else "c" + space)
    rng = np.random.default_rng(seed)
    x = (rng.random(test_shape) * 1000 + np.linspace(0, 400, test_shape[-1])).astype(np.float32)
    pre = apply_processing(x, list(preprocessing), 1)
    with torch.no_grad():
        t = torch.from_numpy(pre.astype(np.float32))
        y = net(t.movedim(1, -1) if channels_last else t)
        y = (y.movedim(-1, 1) if channels_last else y).numpy()
    y = apply_processing(y, list(postprocessing), 1, reference=x).astype(np.float32)
    test_in, test_out = (x, y) if not channels_last else (np.moveaxis(x, 1, -1), np.moveaxis(y, 1, -1))
    files = {}
    files["arch.py"] = source.encode()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    files["weights.pt"] = buffer.getvalue()
    if "torchscript" in weights:
        example = torch.zeros(test_in.shape)
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.trace(net, example), buffer)
        files["weights.torchscript"] = buffer.getvalue()
    for name, array in (("test_input.npy", test_in), ("test_output.npy", test_out)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        files[name] = buffer.getvalue()
    files["README.md"] = b"# a small network\n\n## Validation\n\nNone.\n"
    minimum, step = valid
    if fmt == "0.5":
        ids = {"b": {"type": "batch"}, "c": {"type": "channel", "channel_names": [f"c{i}" for i in range(channels)]}}
        in_axes = [ids[a] if a in ids else {"type": "space", "id": a, "size": {"min": minimum, "step": step}}
                   for a in axes]
        out_ids = {"b": {"type": "batch"},
                   "c": {"type": "channel", "channel_names": [f"class {i}" for i in range(classes)]}}
        out_axes = [out_ids[a] if a in out_ids else
                    {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}, "halo": halo}
                    for a in axes]
        w = {}
        if "pytorch_state_dict" in weights:
            w["pytorch_state_dict"] = {
                "source": "weights.pt", "sha256": sha(files["weights.pt"]), "pytorch_version": "2.1",
                "architecture": {"source": "arch.py", "sha256": sha(files["arch.py"]), "callable": "SmallNet",
                                 "kwargs": kwargs}}
        if "torchscript" in weights:
            w["torchscript"] = {"source": "weights.torchscript", "sha256": sha(files["weights.torchscript"]),
                                "pytorch_version": "2.1"}
            if "pytorch_state_dict" in weights:
                w["torchscript"]["parent"] = "pytorch_state_dict"
        rdf = {
            "format_version": "0.5.4", "type": "model", "name": "small network", "description": "two convolutions",
            "authors": [{"name": "A. Tester"}], "license": "MIT", "documentation": "README.md",
            "inputs": [{"id": "raw", "axes": in_axes, "data": {"type": "float32"},
                        "test_tensor": {"source": "test_input.npy", "sha256": sha(files["test_input.npy"])},
                        "preprocessing": [_v05_step(s, axes) for s in preprocessing]}],
            "outputs": [{"id": "out", "axes": out_axes, "data": {"type": "float32"},
                         "test_tensor": {"source": "test_output.npy", "sha256": sha(files["test_output.npy"])},
                         "postprocessing": [_v05_step(s, axes) for s in postprocessing]}],
            "weights": w,
        }
        if tolerance:
            rdf["config"] = {"bioimageio": {"reproducibility_tolerance": [tolerance]}}
    else:
        shape_min = [1 if a == "b" else channels if a == "c" else minimum for a in axes]
        shape_step = [0 if a in "bc" else step for a in axes]
        w = {}
        if "pytorch_state_dict" in weights:
            w["pytorch_state_dict"] = {"source": "weights.pt", "sha256": sha(files["weights.pt"]),
                                       "architecture": "arch.py:SmallNet",
                                       "architecture_sha256": sha(files["arch.py"]), "kwargs": kwargs}
        if "torchscript" in weights:
            w["torchscript"] = {"source": "weights.torchscript", "sha256": sha(files["weights.torchscript"])}
        rdf = {
            "format_version": "0.4.10", "type": "model", "name": "small network", "description": "two convolutions",
            "authors": [{"name": "A. Tester"}], "cite": [{"text": "A. Tester, 2024", "doi": "10.5281/zenodo.1"}],
            "license": "MIT", "documentation": "README.md", "timestamp": "2024-01-01T00:00:00", "tags": ["test"],
            "inputs": [{"name": "raw", "axes": axes, "data_type": "float32", "data_range": [float("-inf"), float("inf")],
                        "shape": {"min": shape_min, "step": shape_step},
                        "preprocessing": [_v04_step(s, axes) for s in preprocessing]}],
            "outputs": [{"name": "out", "axes": axes, "data_type": "float32", "data_range": [float("-inf"), float("inf")],
                         "shape": {"reference_tensor": "raw", "scale": [1.0] * len(axes),
                                   "offset": [0] * len(axes)},
                         "halo": [0 if a in "bc" else halo for a in axes],
                         "postprocessing": [_v04_step(s, axes) for s in postprocessing]}],
            "test_inputs": ["test_input.npy"], "test_outputs": ["test_output.npy"],
            "weights": w,
        }
    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False).encode()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if not zipped:
        return folder
    path = where / "package.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in files:
            zf.write(folder / name, name)
    return path


def package_tensors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The package's own test input and output (channels first, as napari-qlty reads them)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return (np.load(io.BytesIO(zf.read("test_input.npy"))), np.load(io.BytesIO(zf.read("test_output.npy"))))
    return np.load(Path(path) / "test_input.npy"), np.load(Path(path) / "test_output.npy")
