#!/usr/bin/env python
"""GPU check of the in-memory engine: exactness, gradients and timings against a clone().

Run on a machine with CUDA: ``PYTHONPATH=src python benchmarks/gpu_check.py``. Prints
one line per check; the numbers are medians of 5 runs after a warm-up.
"""

import time

import torch

from napari_qlty import Grid, Weighting, extract, infer, stitch


def median_ms(fn, n=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1e3


def main():
    dev = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name(0))
    workloads = [
        ("2d (4,1,2048,2048) w256 s192 b16", (4, 1, 2048, 2048), 256, 192, 16, 0.5, 16),
        ("3d (1,1,236,720,510) w128 s108 b10", (1, 1, 236, 720, 510), 128, 108, 10, 0.0, 4),
    ]
    for name, shape, w, s, b, bw, batch in workloads:
        x = torch.randn(shape, device=dev)
        grid = Grid(shape[2:], w, s, b)
        floor = median_ms(lambda: x.clone())
        for mode in ("border", "gaussian", "hann", "linear"):
            wt = Weighting(mode, border_weight=bw)
            t_inf = median_ms(lambda: infer(lambda t: t, x, grid, wt, batch_size=batch))
            y = infer(lambda t: t, x, grid, wt, batch_size=batch)
            err = (y - x).abs().max().item()
            print(f"{name} {mode:<8} infer {t_inf:8.2f} ms = {t_inf / floor:5.2f}x clone ({floor:.2f} ms)  max err {err:.1e}")
        t_all = median_ms(lambda: stitch(extract(x, grid), grid, Weighting("border", bw)))
        print(f"{name} extract+stitch all {t_all:8.2f} ms = {t_all / floor:5.2f}x clone")
        conv = (torch.nn.Conv2d if len(shape) == 4 else torch.nn.Conv3d)(1, 2, 3, padding=1).to(dev).eval()
        with torch.no_grad():
            t_conv = median_ms(lambda: conv(x))
            t_tiled = median_ms(lambda: infer(conv, x, grid, Weighting("border", 0.0), batch_size=batch))
            diff = (infer(conv, x, grid, Weighting("border", 0.0), batch_size=batch) - conv(x)).abs().max().item()
        print(f"{name} conv: untiled {t_conv:.2f} ms, tiled {t_tiled:.2f} ms = {t_tiled / t_conv:.2f}x; "
              f"max |tiled - untiled| {diff:.1e}")
        del x
        torch.cuda.empty_cache()
    # gradients through stitch on the GPU
    x = torch.randn(2, 1, 70, 50, 45, device=dev)
    grid = Grid((70, 50, 45), 32, 16, 4)
    net = torch.nn.Conv3d(1, 1, 3, padding=1).to(dev)
    loss = stitch(net(extract(x, grid)), grid, Weighting("gaussian")).square().mean()
    loss.backward()
    g = net.weight.grad
    print(f"grad through stitch on cuda: finite {bool(torch.isfinite(g).all())}, norm {g.norm().item():.3e}")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
