"""Model files by path: the three formats, the refusals, devices, batch sizing, OOM backoff."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import threading
import zipfile

import pytest
import torch

from napari_qlty import models as M
from napari_qlty.models.batching import structure_key
from napari_qlty.models.devices import mps_available
from napari_qlty.models import (
    PICKLED_MODEL_MESSAGE,
    ModelLoadError,
    ModelSpec,
    auto_batch_size,
    check_model_output,
    load_model,
    resolve_device,
    run_with_oom_backoff,
)

FACTORY_MODULE = "qlty_test_model_factory"
FACTORY_SOURCE = '''
import torch

CALLS = []


def build(channels=2, in_channels=1):
    CALLS.append((channels, in_channels))
    return torch.nn.Conv3d(in_channels, channels, 3, padding=1)


class Zoo:
    @staticmethod
    def small():
        return build()


NOT_CALLABLE = 3


def not_a_module():
    return 3
'''

WINDOW = (8, 8, 8)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 2, 3, padding=1).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One model saved in every format (torch.export is slow the first time: do it once)."""
    d = tmp_path_factory.mktemp("models")
    model = make_model()
    out = {"dir": d, "model": model}
    out["ts"] = str(d / "model_ts.pt")
    torch.jit.save(torch.jit.script(model), out["ts"])
    out["pt2"] = str(d / "model.pt2")
    program = torch.export.export(
        model, (torch.zeros(2, 1, *WINDOW),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, out["pt2"])
    out["sd"] = str(d / "weights.pt")
    torch.save(model.state_dict(), out["sd"])
    out["full"] = str(d / "pickled_model.pt")
    torch.save(model, out["full"])
    (d / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    return out


@pytest.fixture
def factory(files, monkeypatch):
    """The factory module importable (from the models folder), fresh for each test."""
    monkeypatch.syspath_prepend(str(files["dir"]))
    sys.modules.pop(FACTORY_MODULE, None)
    M.clear_model_cache()
    yield f"{FACTORY_MODULE}:build"
    sys.modules.pop(FACTORY_MODULE, None)
    M.clear_model_cache()


@pytest.fixture(autouse=True)
def _fresh_state():
    M.clear_model_cache()
    M.forget_batch_size()
    yield
    M.clear_model_cache()
    M.forget_batch_size()


def batch(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, *WINDOW, generator=torch.Generator().manual_seed(n))


# ---------------------------------------------------------------------------------------
# the three formats
# ---------------------------------------------------------------------------------------


def test_torchscript_loads_and_matches(files):
    spec = ModelSpec(files["ts"])
    assert spec.kind() == "torchscript"
    loaded = load_model(spec)
    assert not loaded.training
    x = batch()
    torch.testing.assert_close(loaded(x), files["model"](x))
    assert "TorchScript" in spec.describe()


def test_exported_program_loads_and_matches(files):
    spec = ModelSpec.parse(files["pt2"])
    assert spec.kind() == "export"
    loaded = load_model(spec, "cpu")
    for n in (1, 3):
        x = batch(n)
        torch.testing.assert_close(loaded(x), files["model"](x))
    assert check_model_output(loaded, 1, WINDOW, "cpu") == 2
    assert "torch.export" in spec.describe()


def test_state_dict_with_factory_loads_and_matches(files, factory):
    spec = ModelSpec.parse(f'{files["sd"]}::{factory}::{{"channels": 2}}')
    assert spec.factory == factory and spec.factory_kwargs == (("channels", 2),)
    assert spec.kind() == "state_dict"
    loaded = load_model(spec)
    assert isinstance(loaded, torch.nn.Conv3d) and not loaded.training
    x = batch()
    torch.testing.assert_close(loaded(x), files["model"](x))
    assert sys.modules[FACTORY_MODULE].CALLS == [(2, 1)]
    assert f"built by {factory}(channels=2)" in spec.describe()


def test_training_checkpoints_and_prefixes_are_unwrapped(files, factory, tmp_path):
    sd = files["model"].state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    loaded = load_model(ModelSpec(str(path), factory))
    x = batch()
    torch.testing.assert_close(loaded(x), files["model"](x))


def test_nested_factory_attribute(files, factory):
    loaded = load_model(ModelSpec(files["sd"], f"{FACTORY_MODULE}:Zoo.small"))
    x = batch()
    torch.testing.assert_close(loaded(x), files["model"](x))


def test_exported_in_training_mode_runs_in_inference_mode(tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.BatchNorm3d(2), torch.nn.Dropout(0.5)
    )
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
        net[1].running_var.fill_(2.0)
    net.train()
    program = torch.export.export(
        net, (torch.zeros(2, 1, *WINDOW),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = tmp_path / "train_mode.pt2"
    torch.export.save(program, path)
    with pytest.warns(UserWarning, match="training mode"):
        loaded = load_model(str(path))
    net.eval()
    x = batch()
    torch.testing.assert_close(loaded(x), net(x))
    torch.testing.assert_close(loaded(x), net(x))  # running statistics left alone


# ---------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------


def test_pickled_model_is_refused(files, factory):
    for spec in (ModelSpec(files["full"]), ModelSpec(files["full"], factory)):
        with pytest.raises(ModelLoadError) as info:
            load_model(spec)
        assert PICKLED_MODEL_MESSAGE in str(info.value)
        assert "Conv3d" in str(info.value)


def test_pickled_checkpoint_objects_are_refused(tmp_path, factory):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": make_model().state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ModelLoadError, match="never unpickles code"):
        load_model(ModelSpec(str(path), factory))


def test_state_dict_without_factory_is_refused(files):
    with pytest.raises(ModelLoadError, match="no factory"):
        load_model(files["sd"])


@pytest.mark.parametrize(
    "factory_text, match",
    [
        ("qlty_no_such_module_xyz:build", "cannot import the module 'qlty_no_such_module_xyz'"),
        (f"{FACTORY_MODULE}:missing", "has no attribute 'missing'"),
        (f"{FACTORY_MODULE}:NOT_CALLABLE", "not callable"),
        (f"{FACTORY_MODULE}:not_a_module", "not a torch.nn.Module"),
    ],
)
def test_bad_factories(files, factory, factory_text, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(ModelSpec(files["sd"], factory_text))


def test_state_dict_that_does_not_fit(files, factory):
    spec = ModelSpec(files["sd"], factory, (("channels", 3),))
    with pytest.raises(ModelLoadError, match="does not fit the model built by"):
        load_model(spec)


def test_factory_with_a_program_file_is_refused(files, factory):
    with pytest.raises(ModelLoadError, match="only for state dict"):
        load_model(ModelSpec(files["ts"], factory))


def test_missing_and_unrecognised_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as z:
        z.writestr("a/readme.txt", "hello")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(str(junk))
    assert "unrecognised" in ModelSpec(str(junk)).describe()
    text = tmp_path / "notes.pt"
    text.write_text("hello world")
    with pytest.raises(ModelLoadError, match="not a model file torch can read") as info:
        load_model(ModelSpec(str(text), "a.b:c"))
    assert "operand" not in str(info.value) and "bioimage.io package" in str(info.value)  # not torch's opcode
    assert "missing" in ModelSpec(str(tmp_path / "nope.pt")).describe()


# --- hostile torch.export archives: torch's loader would run their contents -----------


def rewrite_pt2(src: str, dst, edit_program=None, extra: dict | None = None, replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            if edit_program and info.filename.endswith("models/model.json"):
                doc = json.loads(data)
                edit_program(doc)
                data = json.dumps(doc).encode()
            if replace:
                data = replace(info.filename[len(root) + 1 :], data)
            zout.writestr(info, data)
        for name, data in (extra or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return str(dst)


def test_guard_code_in_an_archive_is_never_run(files, tmp_path):
    marker = tmp_path / "guard_ran"

    def edit(doc):
        doc["guards_code"] = [f"open({str(marker)!r}, 'w') is None"]

    path = rewrite_pt2(files["pt2"], tmp_path / "guards.pt2", edit)
    loaded = load_model(path)
    loaded(batch(2))
    assert not marker.exists()


def _first_size_to(expr: str):
    def edit(doc):
        tensor = next(iter(doc["graph_module"]["graph"]["tensor_values"].values()))
        tensor["sizes"][2] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 3}}}

    return edit


def _target_to(target: str):
    def edit(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = target

    return edit


def _out_spec_defaultdict(doc):
    context = {"default_factory_module": "os", "default_factory_name": "getcwd", "dict_context": []}
    node = {"type": "collections.defaultdict", "context": json.dumps(context), "children_spec": []}
    spec = [1, node]
    doc["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = json.dumps(spec)


@pytest.mark.parametrize(
    "edit, match",
    [
        (_first_size_to("__import__('os').getcwd()"), "not plain shape arithmetic"),
        (_first_size_to("Symbol('s0').__class__"), "not plain shape arithmetic"),
        (_target_to("torch.save"), "not a torch operator"),
        (_target_to("torch.ops.load_library"), "not a torch operator"),
        (_target_to("builtins.exec"), "not a torch operator"),
        (_out_spec_defaultdict, "collections.defaultdict"),
    ],
    ids=["sympy-eval", "sympy-attribute", "torch.save", "load_library", "exec", "defaultdict"],
)
def test_hostile_program_json_is_refused(files, tmp_path, edit, match):
    path = rewrite_pt2(files["pt2"], tmp_path / "hostile.pt2", edit)
    with pytest.raises(ModelLoadError, match=match):
        load_model(path)


def test_symbolic_shapes_of_a_dynamic_batch_are_accepted(files):
    with zipfile.ZipFile(files["pt2"]) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith("models/model.json"))).decode()
    assert "Symbol(" in text  # the dynamic batch is written as a sympy expression
    M.check_exported_archive(files["pt2"])


def test_pickled_payloads_and_native_code_are_refused(files, tmp_path):
    import io

    buf = io.BytesIO()
    torch.save(argparse.Namespace(a=1), buf)

    def pickled_weight(rel, data):
        if rel.endswith("_weights_config.json"):
            config = json.loads(data)
            for meta in config["config"].values():
                meta["use_pickle"] = True
            return json.dumps(config).encode()
        if rel == "data/weights/weight_0":
            return buf.getvalue()
        return data

    path = rewrite_pt2(files["pt2"], tmp_path / "pickled.pt2", replace=pickled_weight)
    with pytest.raises(ModelLoadError, match="unpickling"):
        load_model(path)
    path = rewrite_pt2(files["pt2"], tmp_path / "samples.pt2", replace=lambda rel, data: (
        buf.getvalue() if rel.startswith("data/sample_inputs/") else data
    ))
    with pytest.raises(ModelLoadError, match="unpickling"):
        load_model(path)
    aoti = {"data/aotinductor/model/x.so": b"\x7fELF"}
    path = rewrite_pt2(files["pt2"], tmp_path / "aoti.pt2", extra=aoti)
    with pytest.raises(ModelLoadError, match="AOTInductor"):
        load_model(path)
    opaque = {"data/constants/opaque_obj_0": b"x"}
    path = rewrite_pt2(files["pt2"], tmp_path / "opaque.pt2", extra=opaque)
    with pytest.raises(ModelLoadError, match="object constant"):
        load_model(path)


# ---------------------------------------------------------------------------------------
# the spec, the cache
# ---------------------------------------------------------------------------------------


def test_spec_pickles_parses_and_prints(files):
    spec = ModelSpec(files["sd"], f"{FACTORY_MODULE}:build", {"channels": 2, "depth": [1, 2]})
    assert spec.factory_kwargs == (("channels", 2), ("depth", [1, 2]))
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and hash(again) == hash(spec)
    assert ModelSpec.parse(str(spec)) == spec
    assert ModelSpec.parse(spec) is spec
    relative = ModelSpec("some/model.pt")
    assert os.path.isabs(relative.path)
    for bad in ("nodots", "a.b", "a:b:c", "1a:b"):
        with pytest.raises(ValueError, match="package.module:function"):
            ModelSpec("m.pt", bad)
    with pytest.raises(ValueError, match="without a factory"):
        ModelSpec("m.pt", None, {"a": 1})
    with pytest.raises(ValueError, match="not JSON"):
        ModelSpec.parse("m.pt::a.b:c::{nope")


def test_fingerprint(files, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copy(files["ts"], copy)
    first = ModelSpec(str(copy)).fingerprint()
    assert first == ModelSpec(files["ts"]).fingerprint()  # the bytes, not the path
    assert len(first) == 64
    other = ModelSpec(str(copy), "a.b:c").fingerprint()
    assert other != first != ModelSpec(str(copy), "a.b:c", {"k": 1}).fingerprint()
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    assert ModelSpec(str(copy)).fingerprint() != first
    with pytest.raises(FileNotFoundError):
        ModelSpec(str(tmp_path / "none.pt")).fingerprint()


def test_cache_loads_once_per_device_and_reloads_changed_files(files, factory, tmp_path):
    path = tmp_path / "w.pt"
    shutil.copy(files["sd"], path)
    spec = ModelSpec(str(path), factory)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(load_model(spec, "cpu"))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(r is results[0] for r in results)
    assert load_model(str(spec), torch.device("cpu")) is results[0]
    assert len(sys.modules[FACTORY_MODULE].CALLS) == 1
    torch.save({k: v + 1 for k, v in files["model"].state_dict().items()}, path)
    os.utime(path, ns=(1, 1))  # a different stamp, whatever the clock's resolution
    reloaded = load_model(spec)
    assert reloaded is not results[0]
    assert torch.equal(reloaded.bias, files["model"].bias + 1)


def test_objects_pass_through(files):
    net = make_model().eval()
    assert load_model(net) is net  # already ready: used as it is
    training = make_model().train()
    ready = load_model(training)
    assert ready is not training and not ready.training and training.training  # a private copy
    fn = lambda x: x  # noqa: E731
    assert load_model(fn) is fn


# ---------------------------------------------------------------------------------------
# devices and output checks
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_unavailable_is_a_clear_error():
    for text in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(text)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("gpu0", "tpu", ""):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(bad)
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
    if not mps_available():
        with pytest.raises(ValueError, match="MPS is not available"):
            resolve_device("mps")


class Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_check_model_output():
    assert check_model_output(make_model(), 1, WINDOW, "cpu") == 2
    valid = torch.nn.Conv3d(1, 2, 3).eval()  # no padding: 8 -> 6
    with pytest.raises(ValueError) as info:
        check_model_output(valid, 1, WINDOW, "cpu")
    assert "(1, 2, 6, 6, 6)" in str(info.value) and "(1, 1, 8, 8, 8)" in str(info.value)
    cases = {
        "tuple of 2 items": Lambda(lambda x: (x, x)),
        "(1, 1, 512)": Lambda(lambda x: x.flatten(2)),
        "(2, 1, 8, 8, 8)": Lambda(lambda x: torch.cat([x, x])),
    }
    for match, model in cases.items():
        with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
            check_model_output(model, 1, WINDOW, "cpu")
    # wrong input channels: said in the image's terms, before running (a module) or from
    # the model's own error (TorchScript: the last line of its trace), which is chained
    with pytest.raises(ValueError, match=r"^the model expects 1 channel, the image has 3$"):
        check_model_output(make_model(), 3, WINDOW, "cpu")
    scripted = torch.jit.script(torch.nn.Conv3d(1, 2, 3, padding=1))
    with pytest.raises(ValueError, match=r"^the model expects 1 channel, the image has 3 \(the model failed "
                                         r"on a window of shape \(3, 8, 8, 8\)") as info:
        check_model_output(scripted, 3, WINDOW, "cpu")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "TorchScript" not in str(info.value)
    with pytest.raises(ValueError, match=r"the model takes 3D windows, but the windows are 4D"):
        check_model_output(scripted, 1, (1, *WINDOW), "cpu")


# ---------------------------------------------------------------------------------------
# batch sizes
# ---------------------------------------------------------------------------------------


class LimitedModel(torch.nn.Module):
    """Doubles its input; 'runs out of memory' above ``limit`` windows."""

    def __init__(self, limit: int, error=torch.cuda.OutOfMemoryError):
        super().__init__()
        self.limit, self.error, self.calls = limit, error, []

    def forward(self, x):
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 2 + 1


def test_oom_backoff_splits_and_remembers():
    model = LimitedModel(2)
    x = batch(8)
    out = run_with_oom_backoff(model, x)
    assert torch.equal(out, x * 2 + 1)
    assert model.calls == [8, 4, 2, 2, 2, 2]
    assert M.remembered_batch_size(model) == 2
    model.calls.clear()
    torch.testing.assert_close(run_with_oom_backoff(model, batch(5)), batch(5) * 2 + 1)
    assert model.calls == [2, 2, 1]  # starts at the size that worked
    assert M.remembered_batch_size(LimitedModel(2)) is None  # per model
    M.forget_batch_size(model)
    assert M.remembered_batch_size(model) is None


def test_oom_backoff_odd_sizes_and_plain_runtime_errors():
    model = LimitedModel(3, RuntimeError)
    x = batch(7)
    assert torch.equal(run_with_oom_backoff(model, x), x * 2 + 1)
    assert model.calls == [7, 4, 2, 2, 2, 1]
    assert M.remembered_batch_size(model) == 2
    cpu = LimitedModel(1, lambda m: RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert torch.equal(run_with_oom_backoff(cpu, x), x * 2 + 1)


def test_oom_at_the_smallest_batch_is_raised_clearly():
    model = LimitedModel(0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"1 window\(s\) of shape \(1, 8, 8, 8\)"):
        run_with_oom_backoff(model, batch(4))
    with pytest.raises(RuntimeError, match="min_batch=4"):
        run_with_oom_backoff(LimitedModel(3, RuntimeError), batch(8), min_batch=4)


def test_other_errors_pass_through():
    def broken(x):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        run_with_oom_backoff(broken, batch(4))


def test_auto_batch_size_cpu(monkeypatch):
    # measured here, not taken from another test's measurement of the same structure
    monkeypatch.setattr("napari_qlty.models.batching._COSTS", {})
    model = make_model()
    per_window, fixed, _ = M.window_cost(model, 1, WINDOW, "cpu")  # measured: the same each time
    assert per_window >= (1 + 2) * 8 * 8 * 8 * 4  # at least the window in and its two channels out
    assert M.window_cost(model, 1, WINDOW, "cpu") == (per_window, fixed, 2)
    assert fixed < per_window  # a conv's cost grows with the batch; little is fixed
    per_window += fixed
    assert auto_batch_size(model, 1, WINDOW, "cpu", budget_bytes=1) == 1
    assert auto_batch_size(model, 1, WINDOW, "cpu", budget_bytes=3 * per_window) == 2
    assert auto_batch_size(model, 1, WINDOW, "cpu", budget_bytes=9 * per_window) == 8
    assert auto_batch_size(model, 1, WINDOW, "cpu", budget_bytes=1 << 40, start=48) == 32
    n = auto_batch_size(model, 1, WINDOW, "cpu")
    assert n >= 1 and n & (n - 1) == 0 and n <= 64
    with pytest.raises(ValueError, match=r"\(1, 2, 6, 6, 6\)"):
        auto_batch_size(torch.nn.Conv3d(1, 2, 3), 1, WINDOW, "cpu")


class Counted(torch.nn.Module):
    """A conv that counts the windows it runs (in an attribute a structure ignores)."""

    def __init__(self, channels: int = 2, chunk: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, channels, 3, padding=1)
        self.chunk = chunk  # a plain setting: part of the structure
        self._runs: list[int] = []

    def forward(self, x):
        self._runs.append(len(x))
        return self.conv(x)


def test_window_cost_is_measured_once_per_structure():
    """Probing runs the model on several windows; a model built alike (another round's
    weights) reuses the measurement, anything built otherwise is measured."""
    window = (6, 7, 5)  # a window no other test measures
    first = Counted().eval()
    cost = M.window_cost(first, 1, window, "cpu")
    assert first._runs and cost[2] == 2
    other_weights = Counted().eval()
    with torch.no_grad():
        other_weights.conv.weight.mul_(3)
    assert M.window_cost(other_weights, 1, window, "cpu") == cost
    assert other_weights._runs == []  # not run: same structure, same cost
    for changed, args in ((Counted(channels=3).eval(), (1, window)), (Counted(chunk=8).eval(), (1, window)),
                          (Counted().eval(), (1, (6, 7, 6)))):
        M.window_cost(changed, *args, "cpu")
        assert changed._runs, "another structure or window is measured"
    assert structure_key(lambda x: x) is None
    scripted = torch.jit.script(make_model())
    assert structure_key(scripted) is None  # a program is measured every time


def test_auto_batch_size_of_a_fixed_batch_export(tmp_path):
    model = make_model()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, *WINDOW),)), path)
    loaded = load_model(str(path))
    assert auto_batch_size(loaded, 1, WINDOW, "cpu", budget_bytes=1 << 40) == 1
    with pytest.raises(ValueError, match="dynamic batch"):
        check_model_output(loaded, 1, (4, 4, 4), "cpu")


# ---------------------------------------------------------------------------------------
# on a GPU (skipped elsewhere)
# ---------------------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda_only
def test_cuda_loading_of_every_format(files, factory):
    dev = resolve_device("cuda")
    assert dev == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("auto") == dev
    x = batch(3)
    expected = files["model"](x)
    for spec in (files["ts"], files["pt2"], f'{files["sd"]}::{factory}'):
        loaded = load_model(spec, dev)
        out = loaded(x.to(dev))
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@cuda_only
def test_cuda_auto_batch_size_and_real_oom_backoff():
    dev = resolve_device("cuda")
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.Conv3d(16, 2, 1))
    model = model.to(dev)
    window = (32, 32, 32)
    n = auto_batch_size(model, 1, window, dev)
    assert n >= 1 and n & (n - 1) == 0 and n <= 64
    per_window = 16 * 32**3 * 4
    small = auto_batch_size(model, 1, window, dev, budget_bytes=4 * per_window)
    assert 1 <= small <= 4
    third = torch.cuda.get_device_properties(dev).total_memory // 3

    def hungry(x):  # a third of the card per window: 2 fit, 4 do not
        scratch = torch.empty(len(x) * third, dtype=torch.uint8, device=x.device)
        del scratch
        return x * 2

    x = torch.randn(8, 1, 4, 4, 4, device=dev)
    assert torch.equal(run_with_oom_backoff(hungry, x), x * 2)
    assert M.remembered_batch_size(hungry) == 2
    torch.cuda.empty_cache()
