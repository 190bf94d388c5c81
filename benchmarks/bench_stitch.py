#!/usr/bin/env python
"""Time tiled inference (window extraction + model + stitching) against floors and peers.

Each (method, workload, model) runs in a fresh subprocess of this same script
(``--worker``), so its peak memory is its own: the peak resident set is reset after the
input and the model exist (``/proc/self/clear_refs``; ``getrusage`` delta elsewhere) and
read back after the warm-up and all timed runs. Every worker also times ``x.clone()`` of
its own input right after the method, so the "x clone" ratio compares two numbers taken
seconds apart in one process (the machine's load drifts less in between).

Methods
-------
clone                 x.clone(): the memory-bandwidth floor (one read, one write)
untiled               model(x) on the whole volume: the compute floor (conv model only)
ours-infer-<mode>     napari_qlty.core.inference, batched, for mode in border/gaussian/hann/linear
ours-stitch           stitch(model(extract(x, grid)), grid, Weighting("border")): all windows at once
monai-<mode>          monai.inferers.sliding_window_inference, mode constant / gaussian
qlty-mem              qlty 1.5.0 NCYXQuilt / NCZYXQuilt: unstitch, model on all, stitch
qlty-mem-padded       (3D) NCZYXQuilt on the volume zero-padded by hand to a shape its step divides
qlty-large            qlty 1.5.0 LargeNCYXQuilt / LargeNCZYXQuilt: per-window stitch into zarr;
                      a subset of windows is timed and the total extrapolated (see --large-windows)

Run ``python benchmarks/bench_stitch.py --help``; ``benchmarks/run.sh`` builds the scratch
environment with the peers first. The markdown table goes to stdout, progress to stderr.
No timing here is ever asserted in tests.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

WORKLOADS = {
    # 2D: 4 images of 2048^2, window 256, step 192, border 16 weighted 0.5
    "2d": dict(shape=(4, 1, 2048, 2048), window=256, step=192, border=16, border_weight=0.5,
               batch_size=16),
    # the paper's 3D volume: window 128, step 108, border 10 weighted 0
    "3d": dict(shape=(1, 1, 236, 720, 510), window=128, step=108, border=10, border_weight=0.0,
               batch_size=4),
}
MODES = ("border", "gaussian", "hann", "linear")
OURS_REF = "ours-infer-border"
ALL_METHODS = (
    ["clone", "untiled"]
    + [f"ours-infer-{m}" for m in MODES]
    + ["ours-stitch", "monai-constant", "monai-gaussian", "qlty-mem", "qlty-mem-padded", "qlty-large"]
)
GROUPS = {
    "all": ALL_METHODS,
    "floors": ["clone", "untiled"],
    "ours": [f"ours-infer-{m}" for m in MODES] + ["ours-stitch"],
    "monai": ["monai-constant", "monai-gaussian"],
    "qlty": ["qlty-mem", "qlty-mem-padded", "qlty-large"],
}
MODELS = ("identity", "conv")
MIB = 1 << 20
MEM_NOTE = ("Peak Δmem: on the CPU the peak resident set of the timed runs above what the process "
            "held before them (input and model included in that baseline); on a GPU "
            "torch.cuda.max_memory_allocated above the allocations held before them. Memory targets:")


# ----------------------------------------------------------------------------- helpers
def windows_per_axis(size: int, window: int, step: int) -> int:
    return math.ceil((size - window) / step) + 1


def n_windows(wl: dict) -> int:
    spatial = wl["shape"][2:]
    return wl["shape"][0] * math.prod(windows_per_axis(s, wl["window"], wl["step"]) for s in spatial)


def monai_overlap(window: int, step: int) -> float:
    """The overlap fraction whose ``int(window * (1 - overlap))`` is ``step`` (MONAI's rule)."""
    overlap = 1.0 - step / window
    for _ in range(8):
        got = int(window * (1 - overlap))
        if got == step:
            return overlap
        overlap += (got - step) * 1e-12 / window if got > step else -1e-12
    return overlap


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS, so that the next peak is not hidden by reuse."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory above the point where ``reset`` was called, in bytes."""

    def reset(self) -> None:
        self.cleared = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (and ru_maxrss) to the current RSS
            self.cleared = True
        except OSError:
            pass
        rss = _status_kib("VmRSS")
        self.base_kib = rss if (self.cleared and rss is not None) else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def delta(self) -> int:
        # VmHWM, not ru_maxrss, once clear_refs worked: ru_maxrss never drops below the
        # high-water mark that exec inherited from the parent (the driver, torch imported),
        # which would hide every peak smaller than the driver's own RSS
        hwm = _status_kib("VmHWM") if self.cleared else None
        peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak - self.base_kib) * 1024


# ----------------------------------------------------------------------------- worker
def build_method(method: str, model_name: str, wl: dict, x, model, device, batch_size: int, args):
    """Return (fn, notes, extra): ``fn()`` runs the method once and returns its output."""
    import torch
    import torch.nn.functional as F

    nd = len(wl["shape"]) - 2
    spatial = tuple(wl["shape"][2:])
    w, s, b, bw = wl["window"], wl["step"], wl["border"], wl["border_weight"]
    notes: list[str] = []

    if method == "clone":
        return (lambda: x.clone()), notes
    if method == "untiled":
        return (lambda: model(x)), notes

    if method.startswith("ours-"):
        from napari_qlty import Grid, Weighting, extract, infer, stitch

        grid = Grid(spatial, w, s, b)
        if method == "ours-stitch":
            weighting = Weighting("border", border_weight=bw)
            notes.append(f"{len(grid) * wl['shape'][0]} windows at once, border weighting")
            return (lambda: stitch(model(extract(x, grid)), grid, weighting)), notes
        mode = method.removeprefix("ours-infer-")
        weighting = Weighting(mode, border_weight=bw)
        notes.append(f"batch {batch_size}")
        return (lambda: infer(model, x, grid, weighting, batch_size=batch_size, device=device)), notes

    if method.startswith("monai-"):
        from monai.inferers import sliding_window_inference
        from monai.inferers.utils import _get_scan_interval

        mode = method.removeprefix("monai-")
        overlap = monai_overlap(w, s)
        used = _get_scan_interval(spatial, (w,) * nd, nd, (overlap,) * nd)
        notes.append(f"overlap {overlap:.6g} -> step {used[0] if len(set(used)) == 1 else used}, "
                     f"batch {batch_size}")

        def run():
            return sliding_window_inference(
                x, roi_size=(w,) * nd, sw_batch_size=batch_size, predictor=model,
                overlap=overlap, mode=mode, sw_device=device, device=device,
            )
        return run, notes

    if method in ("qlty-mem", "qlty-mem-padded"):
        import qlty

        win, stp, bor = (w,) * nd, (s,) * nd, (b,) * nd
        if method == "qlty-mem-padded":
            # a shape that qlty's step divides: no window runs past the far edge
            target = tuple(w + s * math.ceil((n - w) / s) for n in spatial)
            pads: list[int] = []
            for n, t in zip(reversed(spatial), reversed(target)):
                pads += [0, t - n]
            notes.append(f"padded by hand to {target}")
        else:
            target = spatial
        cls = qlty.NCYXQuilt if nd == 2 else qlty.NCZYXQuilt
        quilt = cls(*target, window=win, step=stp, border=bor, border_weight=bw)
        notes.append(f"{wl['shape'][0] * math.prod(quilt.get_times())} windows at once")
        crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)

        def run():
            xin = F.pad(x, pads) if method == "qlty-mem-padded" else x
            patches = quilt.unstitch(xin)
            out = model(patches).cpu()  # qlty stitches on the CPU
            y, _norm = quilt.stitch(out)
            return y[crop] if method == "qlty-mem-padded" else y
        return run, notes

    raise ValueError(f"unknown method {method!r}")


def chunked_max_abs_diff(y, x) -> float:
    """max |y - x| without a full-size temporary."""
    import torch

    worst = 0.0
    rows = max(1, x.shape[2] // 32)
    for r in range(0, x.shape[2], rows):
        a = y[:, :, r : r + rows].to(x.device, torch.float32)
        worst = max(worst, float((a - x[:, :, r : r + rows]).abs().max()))
    return worst


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_clone(x, repeats: int, device) -> list[float]:
    times = []
    y = x.clone()
    del y
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        y = x.clone()
        sync(device)
        times.append(time.perf_counter() - t0)
        del y
    return times


def run_large(wl, x, model, device, args, peak: PeakRSS) -> dict:
    """qlty's Large classes: per-window unstitch -> model -> stitch into zarr, then return_mean."""
    import numpy as np
    import qlty

    nd = len(wl["shape"]) - 2
    N = wl["shape"][0]
    spatial = tuple(wl["shape"][2:])
    w, s, b, bw = wl["window"], wl["step"], wl["border"], wl["border_weight"]
    cls = qlty.LargeNCYXQuilt if nd == 2 else qlty.LargeNCZYXQuilt
    tmp = tempfile.mkdtemp(prefix="qlty-large-", dir=args.tmpdir)
    try:
        quilt = cls(os.path.join(tmp, "q"), N, *spatial, window=(w,) * nd, step=(s,) * nd,
                    border=(b,) * nd, border_weight=bw)
        total = int(quilt.N_chunks)

        def one(i: int) -> None:
            patch = quilt.unstitch(x, int(i))
            out = model(patch.unsqueeze(0)).cpu()
            quilt.stitch(out, int(i))

        peak.reset()
        if args.large_full:
            sync(device)
            t0 = time.perf_counter()
            for i in range(total):
                one(i)
            y = quilt.return_mean()
            sync(device)
            elapsed = time.perf_counter() - t0
            err = chunked_max_abs_diff(__import__("torch").from_numpy(np.asarray(y)), x) \
                if args.model == "identity" else None
            del y
            return dict(median_s=elapsed, times=[elapsed], extrapolated=False,
                        windows_per_s=total / elapsed, peak_rss=peak.delta(), err=err,
                        notes=[f"all {total} windows, one run (--large-full)"])
        one(0)  # warm-up: creates the zarr stores
        release_free_memory()
        peak.reset()
        k = max(1, min(args.large_windows, total - 1))
        picks = sorted(set(np.linspace(1, total - 1, k).round().astype(int).tolist()))
        per = []
        for i in picks:
            sync(device)
            t0 = time.perf_counter()
            one(i)
            sync(device)
            per.append(time.perf_counter() - t0)
        # return_mean reads the whole store: fill it (untimed) so it reads real chunks
        C = 1
        arr = x.detach().cpu().numpy()
        quilt.mean[...] = arr if arr.shape[1] == C else arr[:, :C]
        quilt.norma[...] = np.ones(spatial, dtype=np.float64)
        del arr
        t0 = time.perf_counter()
        y = quilt.return_mean()
        t_mean = time.perf_counter() - t0
        del y
        med = statistics.median(per)
        est = med * total + t_mean
        return dict(
            median_s=est, times=per, extrapolated=True, windows_per_s=1.0 / med,
            peak_rss=peak.delta(), err=None, return_mean_s=t_mean,
            notes=[f"EXTRAPOLATED: {len(per)} of {total} windows timed, median "
                   f"{med * 1e3:.1f} ms/window ({1.0 / med:.1f} windows/s) x {total} "
                   f"+ return_mean {t_mean:.2f} s"],
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def worker(args) -> dict:
    import torch

    wl = WORKLOADS[args.workload]
    device = torch.device(args.device)
    nd = len(wl["shape"]) - 2
    batch_size = args.batch_size or wl["batch_size"]
    res: dict = dict(method=args.method, workload=args.workload, model=args.model,
                     device=str(device), status="ok", notes=[], batch_size=batch_size,
                     threads=torch.get_num_threads())
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    g = torch.Generator(device=device).manual_seed(1234)
    x = torch.randn(wl["shape"], generator=g, device=device)
    if args.model == "identity":
        model = torch.nn.Identity()
    else:
        conv = (torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(1, 1, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(7)) / 27 ** 0.5)
            conv.bias.zero_()
        model = conv.eval().to(device)
    res["input_mib"] = x.numel() * x.element_size() / MIB
    peak = PeakRSS()
    cuda = device.type == "cuda"

    if args.method == "qlty-large":
        try:
            import qlty  # noqa: F401
        except ImportError as e:
            res.update(status="missing", notes=[f"qlty not installed: {e}"])
            return res
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            gpu_base = torch.cuda.memory_allocated()
        out = run_large(wl, x, model, device, args, peak)
        res["notes"] += out.pop("notes")
        res.update(out)
        res["peak_rss_mib"] = res.pop("peak_rss") / MIB
        if cuda:
            res["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() - gpu_base) / MIB
    else:
        try:
            fn, notes = build_method(args.method, args.model, wl, x, model, device, batch_size, args)
        except ImportError as e:
            res.update(status="missing", notes=[f"not installed: {e}"])
            return res
        res["notes"] += notes
        peak.reset()
        try:
            sync(device)
            t0 = time.perf_counter()
            y = fn()  # warm-up (numba compiles, code pages fault in, caches fill)
            sync(device)
            res["warmup_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - a peer that crashes is a result
            res.update(status="crash", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                       traceback=traceback.format_exc(limit=4))
            return res
        res["warmup_peak_rss_mib"] = peak.delta() / MIB
        res["err"] = chunked_max_abs_diff(y, x) if args.model == "identity" else None
        del y
        release_free_memory()
        # steady state: the peak of the timed runs above what the warm-up left behind
        peak.reset()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            gpu_base = torch.cuda.memory_allocated()
        times = []
        for _ in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            y = fn()
            sync(device)
            times.append(time.perf_counter() - t0)
            del y
        res["times"] = times
        res["median_s"] = statistics.median(times)
        res["peak_rss_mib"] = peak.delta() / MIB
        if cuda:
            res["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() - gpu_base) / MIB
    # the clone floor of this very process, right after the method
    res["clone_times"] = time_clone(x, args.repeats, device)
    res["clone_s"] = statistics.median(res["clone_times"])
    return res


# ----------------------------------------------------------------------------- driver
def expand_methods(spec: str) -> list[str]:
    out: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        names = GROUPS.get(item, [item])
        for n in names:
            if n not in ALL_METHODS:
                raise SystemExit(f"unknown method {n!r}; choose from {', '.join(ALL_METHODS)} "
                                 f"or groups {', '.join(GROUPS)}")
            if n not in out:
                out.append(n)
    return out


def applicable(method: str, model: str, workload: str) -> bool:
    if method == "untiled":
        return model == "conv"
    if method == "qlty-mem-padded":
        return workload == "3d"  # qlty's 2D class steps back; its 3D class does not
    return True


def plan(args) -> list[tuple[str, str, str]]:
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    methods = expand_methods(args.methods)
    jobs = []
    for wl in workloads:
        if "clone" in methods:
            jobs.append(("clone", wl, "-"))
        for model in models:
            for m in methods:
                if m != "clone" and applicable(m, model, wl):
                    jobs.append((m, wl, model))
    return jobs


def run_worker(job, args) -> dict:
    method, wl, model = job
    cmd = [args.python or sys.executable, os.path.abspath(__file__), "--worker",
           "--method", method, "--workload", wl, "--model", "identity" if model == "-" else model,
           "--repeats", str(args.repeats), "--device", args.device,
           "--large-windows", str(args.large_windows)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.large_full:
        cmd.append("--large-full")
    if args.tmpdir:
        cmd += ["--tmpdir", args.tmpdir]
    env = dict(os.environ)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(args.threads)
    src = os.path.join(REPO, "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return dict(method=method, workload=wl, model=model, status="timeout",
                    notes=[f"worker ran past {args.worker_timeout} s"])
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["model"] = model
            r["wall_s"] = time.time() - t0
            return r
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
    return dict(method=method, workload=wl, model=model, status="error",
                notes=[f"worker exited {p.returncode}: {tail}"])


def fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def table(results: list[dict]) -> str:
    ours = {(r["workload"], r["model"]): r.get("median_s") for r in results
            if r["method"] == OURS_REF and r.get("status") == "ok"}
    untiled = {r["workload"]: r.get("median_s") for r in results
               if r["method"] == "untiled" and r.get("status") == "ok"}
    lines = [
        "| method | workload | model | median s | min s | × clone | × ours | × untiled | peak Δmem MiB | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        med = r.get("median_s")
        ok = r.get("status") == "ok" and med is not None
        notes = list(r.get("notes", []))
        if r.get("status") not in ("ok", None):
            notes.insert(0, f"**{r['status']}**" + (f": {r['error']}" if r.get("error") else ""))
        if r.get("err") is not None and r["err"] > 1e-4:
            notes.append(f"WRONG OUTPUT: max |y - x| = {r['err']:.3g}")
        mem = r.get("peak_rss_mib")
        if r.get("peak_gpu_mib") is not None:  # on a GPU the device's peak is the one that counts
            mem = r["peak_gpu_mib"]
            if r.get("peak_rss_mib") is not None:
                notes.append(f"host ΔRSS {r['peak_rss_mib']:.0f} MiB")
        x_clone = med / r["clone_s"] if ok and r.get("clone_s") else None
        ref = ours.get((r["workload"], r["model"]))
        x_ours = med / ref if ok and ref else None
        ref_u = untiled.get(r["workload"]) if r["model"] == "conv" else None
        x_unt = med / ref_u if ok and ref_u else None
        lines.append(
            f"| {r['method']} | {r['workload']} | {r['model']} | "
            f"{fmt(med, '.3f') if ok else r.get('status', '?')} | "
            f"{fmt(min(r['times']) if ok and r.get('times') and not r.get('extrapolated') else None, '.3f')} | "
            f"{fmt(x_clone)} | {fmt(x_ours)} | "
            f"{fmt(x_unt)} | {fmt(mem, '.0f')} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def bound_mib(name: str, batch_size: int = 0) -> float:
    """Output + two batches (windows in, outputs out), MiB: the target for ours' peak Δmem."""
    wl = WORKLOADS[name]
    bs = batch_size or wl["batch_size"]
    vol = math.prod(wl["shape"]) * 4 / MIB
    return vol + 2 * bs * wl["shape"][1] * wl["window"] ** (len(wl["shape"]) - 2) * 4 / MIB


def targets(results: list[dict], batch_size: int = 0) -> list[str]:
    """The project's targets, each checked against this run: one line per target."""
    by = {(r["workload"], r["model"], r["method"]): r for r in results}

    def med(wl, model, method):
        r = by.get((wl, model, method))
        return r["median_s"] if r and r.get("status") == "ok" and r.get("median_s") else None

    def mem(wl, model, method):
        r = by.get((wl, model, method))
        if not r or r.get("status") != "ok":
            return None
        return r.get("peak_gpu_mib", r.get("peak_rss_mib"))

    def verdict(pairs, ok):
        pairs = [p for p in pairs if p[1] is not None]
        if not pairs:
            return "not measured"
        bad = [p for p in pairs if not ok(p[1])]
        shown = ", ".join(f"{k} {v:.2f}" for k, v in pairs)
        return ("MET" if not bad else f"MISSED ({len(bad)} of {len(pairs)})") + f": {shown}"

    wls = sorted({r["workload"] for r in results})
    models = [m for m in MODELS if any(r["model"] == m for r in results)]
    ours = [f"ours-infer-{m}" for m in MODES]
    out = []
    # 1. within 3x the clone floor (the floor of a data-movement-only method: identity model)
    pairs = []
    for wl in wls:
        for m in ours:
            r = by.get((wl, "identity", m))
            if r and r.get("status") == "ok" and r.get("clone_s"):
                pairs.append((f"{wl}/{m.removeprefix('ours-infer-')}", r["median_s"] / r["clone_s"]))
    out.append("- ours ≤ 3× the clone floor (identity model, every weighting; × clone): "
               + verdict(pairs, lambda v: v <= 3))
    # 2. as fast as MONAI everywhere; 5. with conv no slower than MONAI
    for model in models:
        pairs = []
        for wl in wls:
            for ours_m, monai_m in (("ours-infer-border", "monai-constant"),
                                    ("ours-infer-gaussian", "monai-gaussian")):
                a, b = med(wl, model, ours_m), med(wl, model, monai_m)
                if a and b:
                    pairs.append((f"{wl}/{monai_m.removeprefix('monai-')}", b / a))
        out.append(f"- ours at least as fast as MONAI, {model} model (MONAI time / ours; ≥ 1 wanted): "
                   + verdict(pairs, lambda v: v >= 1))
    pairs = []
    for model in models:
        for ours_m, monai_m in (("ours-infer-border", "monai-constant"),
                                ("ours-infer-gaussian", "monai-gaussian")):
            a, b = med("3d", model, ours_m), med("3d", model, monai_m)
            if a and b:
                pairs.append((f"{model}/{monai_m.removeprefix('monai-')}", b / a))
    out.append("- ours 1.5× ahead of MONAI in 3D (MONAI / ours; ≥ 1.5 wanted): "
               + verdict(pairs, lambda v: v >= 1.5))
    # 3. 3x ahead of qlty in memory; 4. 50x ahead of qlty Large
    for peer, want, label in (("qlty-mem", 3, "in-memory (3D: the padded run)"),
                              ("qlty-large", 50, "Large (extrapolated)")):
        pairs = []
        for wl in wls:
            for model in models:
                a = med(wl, model, OURS_REF)
                b = med(wl, model, peer)
                if b is None and peer == "qlty-mem":
                    b = med(wl, model, "qlty-mem-padded")
                if a and b:
                    pairs.append((f"{wl}/{model}", b / a))
        out.append(f"- ours {want}× ahead of qlty {label} (qlty / ours border): "
                   + verdict(pairs, lambda v, w=want: v >= w))
    # 6. memory: no more than MONAI's, and at most output + two batches
    pairs_monai, pairs_bound = [], []
    for wl in wls:
        for model in models:
            mm = [mem(wl, model, m) for m in ("monai-constant", "monai-gaussian")]
            mm = [v for v in mm if v is not None]
            for m in ours:
                v = mem(wl, model, m)
                if v is None:
                    continue
                if mm:
                    pairs_monai.append((f"{wl}/{model}/{m.removeprefix('ours-infer-')}", v / min(mm)))
                pairs_bound.append((f"{wl}/{model}/{m.removeprefix('ours-infer-')}",
                                    v / bound_mib(wl, batch_size)))
    out.append("- ours' peak Δmem ≤ MONAI's (ours / MONAI's smaller; ≤ 1 wanted): "
               + verdict(pairs_monai, lambda v: v <= 1))
    out.append("- ours' peak Δmem ≤ output + 2 batches (ours / that bound; ≤ 1 wanted; the "
               "conv model's own workspace counts too): " + verdict(pairs_bound, lambda v: v <= 1))
    return out


def memory_bounds(workloads, batch_size: int = 0) -> list[str]:
    out = []
    for name in workloads:
        wl = WORKLOADS[name]
        bs = batch_size or wl["batch_size"]
        vol = math.prod(wl["shape"]) * 4 / MIB
        batch = bs * wl["shape"][1] * wl["window"] ** (len(wl["shape"]) - 2) * 4 / MIB
        out.append(f"- {name}: input {vol:.0f} MiB (resident before the peak is reset), output "
                   f"{vol:.0f} MiB, one batch of {bs} windows {batch:.0f} MiB: "
                   f"ours' ΔRSS target is output + 2 batches = {vol + 2 * batch:.0f} MiB")
    return out


def git_state() -> str:
    """The commit measured, and whether src/ differed from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return f"commit {head}" + (f", with uncommitted changes in {len(dirty.splitlines())} file(s) under src/"
                               if dirty else "")


def header(args) -> list[str]:
    import torch

    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:  # noqa: BLE001
            return "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines = [
        f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu}, {os.cpu_count()} logical cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / (1 << 30):.0f} GiB; "
        f"torch threads {args.threads or torch.get_num_threads()}; load average at start {os.getloadavg()[0]:.2f}",
        f"- device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""),
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"monai {version('monai')}, qlty {version('qlty')}, numpy {version('numpy')}, "
        f"zarr {version('zarr')}",
        f"- repeats: {args.repeats} timed runs after one warm-up; median reported",
        f"- napari-qlty source: {git_state()}",
    ]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="all", choices=["2d", "3d", "all"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    p.add_argument("--methods", default="all",
                   help=f"comma list of {', '.join(ALL_METHODS)} or groups {', '.join(GROUPS)}")
    p.add_argument("--models", default="identity,conv", help="comma list of identity, conv")
    p.add_argument("--batch-size", type=int, default=0,
                   help="windows per batch for ours and MONAI (default: 16 in 2D, 4 in 3D)")
    p.add_argument("--large-windows", type=int, default=12,
                   help="windows of qlty's Large classes to time before extrapolating")
    p.add_argument("--large-full", action="store_true",
                   help="run qlty's Large classes over all windows once instead (slow)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch/OpenMP/numba threads in the workers (default: the libraries' own)")
    p.add_argument("--python", help="interpreter for the workers (default: this one)")
    p.add_argument("--json", help="also write the raw results to this file (after every worker)")
    p.add_argument("--from-json", help="only print the report of an earlier --json file")
    p.add_argument("--tmpdir", help="where qlty's Large classes write their zarr stores")
    p.add_argument("--worker-timeout", type=int, default=3600)
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--model", default="identity", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        if args.workload == "all":
            raise SystemExit("--worker needs one workload")
        try:
            res = worker(args)
        except Exception as e:  # noqa: BLE001
            res = dict(method=args.method, workload=args.workload, model=args.model,
                       status="error", notes=[f"{type(e).__name__}: {e}"[:300]],
                       traceback=traceback.format_exc())
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    if args.from_json:
        print(render(args.from_json, args.batch_size))
        return 0
    jobs = plan(args)
    info = header(args)
    results = []
    t_start = time.time()
    for i, job in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {job[0]} {job[1]} {job[2]} ...", end=" ", file=sys.stderr, flush=True)
        r = run_worker(job, args)
        results.append(r)
        if args.json:  # after every worker, so that a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump(dict(header=info, results=results), f, indent=1)
        print(f"{r.get('status')} {fmt(r.get('median_s'), '.3f')} s "
              f"(worker {r.get('wall_s', 0):.0f} s)", file=sys.stderr, flush=True)
    info.append(f"- load average at end {os.getloadavg()[0]:.2f}; whole run "
                f"{(time.time() - t_start) / 60:.1f} min")
    workloads = sorted({j[1] for j in jobs})
    out = ["## Tiled inference benchmark", "", *info, "", table(results), "",
           MEM_NOTE,
           *memory_bounds(workloads, args.batch_size), "", "Targets:",
           *targets(results, args.batch_size), ""]
    print("\n".join(out), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header=info, results=results), f, indent=1)
    return 0


def render(path: str, batch_size: int = 0) -> str:
    """The markdown report of a --json file (also of a run that was cut short)."""
    with open(path) as f:
        data = json.load(f)
    workloads = sorted({r["workload"] for r in data["results"]})
    return "\n".join(["## Tiled inference benchmark", "", *data["header"], "",
                      table(data["results"]), "",
                      MEM_NOTE,
                      *memory_bounds(workloads, batch_size), "", "Targets:",
                      *targets(data["results"], batch_size), ""])


if __name__ == "__main__":
    sys.exit(main())
