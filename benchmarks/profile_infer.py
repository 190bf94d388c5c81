#!/usr/bin/env python
"""Where does napari_qlty.core.inference spend its time? cProfile and torch.profiler on one call.

    python benchmarks/profile_infer.py --workload 3d --model identity --mode border
    python benchmarks/profile_infer.py --workload 2d --model conv --mode gaussian --device cuda

Uses the workloads of bench_stitch.py. After a warm-up call it times ``infer`` and
``x.clone()`` a few times, then profiles one more ``infer`` call with cProfile (Python
functions and the torch ops they call, by own time) and one with torch.profiler (torch
ops by self time). Needs only torch and napari_qlty (the project's venv will do).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from bench_stitch import WORKLOADS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="3d", choices=sorted(WORKLOADS))
    p.add_argument("--model", default="identity", choices=["identity", "conv"])
    p.add_argument("--mode", default="border", choices=["border", "gaussian", "hann", "linear"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--no-torch-profiler", action="store_true")
    args = p.parse_args(argv)

    import torch

    from napari_qlty import Grid, Weighting, infer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    wl = WORKLOADS[args.workload]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    nd = len(wl["shape"]) - 2
    x = torch.randn(wl["shape"], generator=torch.Generator(device=device).manual_seed(1234),
                    device=device)
    if args.model == "identity":
        model = torch.nn.Identity()
    else:
        model = (torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(1, 1, 3, padding=1).to(device).eval()
    grid = Grid(wl["shape"][2:], wl["window"], wl["step"], wl["border"])
    weighting = Weighting(args.mode, border_weight=wl["border_weight"])
    bs = args.batch_size or wl["batch_size"]

    def run():
        return infer(model, x, grid, weighting, batch_size=bs, device=device)

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = fn()
        if cuda:
            torch.cuda.synchronize()
        del y
        return time.perf_counter() - t0

    run(), x.clone()  # warm-up
    t_infer = [timed(run) for _ in range(args.repeats)]
    t_clone = [timed(x.clone) for _ in range(args.repeats)]
    t_untiled = [timed(lambda: model(x)) for _ in range(args.repeats)] if args.model == "conv" else []
    med = statistics.median
    print(f"# infer {args.workload} {args.model} {args.mode} batch {bs} on {device}, "
          f"torch threads {torch.get_num_threads()}, {len(grid) * wl['shape'][0]} windows")
    print(f"infer  median {med(t_infer):.3f} s  {[round(t, 3) for t in t_infer]}")
    print(f"clone  median {med(t_clone):.3f} s  -> infer is {med(t_infer) / med(t_clone):.1f}x clone")
    if t_untiled:
        print(f"model(x) untiled median {med(t_untiled):.3f} s")

    prof = cProfile.Profile()
    prof.enable()
    run()
    if cuda:
        torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print("\n## cProfile, by own time\n")
    print(out.getvalue())

    if not args.no_torch_profiler:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as tp:
            run()
            if cuda:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print("## torch.profiler, torch ops by self time\n")
        print(tp.key_averages().table(sort_by=key, row_limit=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
