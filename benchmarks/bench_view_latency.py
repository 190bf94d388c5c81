#!/usr/bin/env python
"""How soon the prediction shows where the user looks (issue 12): measured in a real viewer.

On the small sample (Plugins > napari-qlty sample: 64 x 192 x 160, its painted labels),
with the Train widget as it opens (time budget 60 s, Train more 20 s, round predictions
"view first, then the rest"):

* **round latency**: from the moment a round is saved (training has ended) to the moment
  every region on screen is final and the layers have been refreshed
  (``TrainWidget.view_latency_s``), after Train and after each Train more;
* **first view**: Tiled inference, "current view first", the round's model, from the
  press of Run to the moment every region on screen is final (``view_ready_s``); with
  the model registered by the Train widget (measured before in this session), and in a
  fresh process from the round's model file (its memory cost measured first);

each for two views: the whole middle slice as napari opens the image, and a zoomed view
of about 48 x 48 voxels of it. The timeline of each prediction (setup until the "start"
event, regions, the view) says where the time goes.

Run: ``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_view_latency.py
[--threads 1] [--budget 60] [--more 20]``. Prints one JSON line per measurement and a
markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ZOOM_VOXELS = 48


def wait(widget) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    while widget.running:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()


def set_view(viewer, image, which: str) -> None:
    """The whole middle slice (napari's reset view), or about ZOOM_VOXELS across its middle."""
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    viewer.dims.set_point(0, image.data.shape[0] // 2)
    if which == "zoomed":
        viewer.scene.camera.zoom = min(viewer.canvas.size) / ZOOM_VOXELS


class Timeline:
    """When each event of a prediction reached the GUI thread (seconds from ``t0``)."""

    def __init__(self) -> None:
        self.t0 = None
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        if self.t0 is not None and name not in self.marks:
            self.marks[name] = round(time.perf_counter() - self.t0, 2)


def viewer_with_sample(threads: int):
    import napari
    import torch

    torch.set_num_threads(threads)
    from napari_qlty._napari.samples import napari_sample_small

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    for data, kwargs, kind in napari_sample_small():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer


def loop(args) -> list[dict]:
    from napari_qlty._napari.widgets.inference import VIEW, InferenceWidget
    from napari_qlty._napari.widgets.train import TrainWidget

    viewer = viewer_with_sample(args.threads)
    image = viewer.layers["tomogram"]
    work = Path(tempfile.mkdtemp(prefix="bench-view-"))
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.seconds_spin.value, train.more_spin.value = args.budget, args.more
    train.rounds_edit.value = work / "labels.rounds"
    rows = []

    for step, (action, view) in enumerate([("Train", "whole slice"), ("Train more", "whole slice"),
                                            ("Train more", "zoomed")]):
        set_view(viewer, image, view.split()[0])
        line = Timeline()

        def on_item(item, line=line):
            what, value = item
            if what == "round":
                line.t0 = value[1]  # the moment the round was saved (worker's clock, the same clock)
                line.mark("saved")
            elif what == "predict":
                line.mark(value.kind if value.kind != "region" else "first region")
                if train.view_latency_s is not None:
                    line.mark("view")

        (train.train if action == "Train" else train.train_more)()
        train.worker.yielded.connect(on_item)
        wait(train)
        if train.outcome != "done":
            raise RuntimeError(train.status.value)
        r = train.current_round
        rows.append({"what": f"round {r.number} ({action}), prediction of the view", "view": view,
                     "seconds": round(train.view_latency_s, 2) if train.view_latency_s is not None else None,
                     "timeline": line.marks, "steps": {m["arch"]: m["steps"] for m in r.attrs["members"]},
                     "regions": train.last_predict.regions_total if train.last_predict else None})
        print(json.dumps(rows[-1]), flush=True)

    model_name, model_file = train.model_name, train.current_round.model_path
    inference = InferenceWidget(viewer)
    viewer.window.add_dock_widget(inference)
    for view in ("whole slice", "zoomed"):
        rows.append(first_view(viewer, image, inference, model_name, view, work / f"registered-{view[0]}.zarr",
                               "registered model (measured before)"))
        print(json.dumps(rows[-1]), flush=True)
    viewer.close()
    for view in ("whole slice", "zoomed"):
        out = subprocess.run([sys.executable, __file__, "--fresh", str(model_file), "--view", view.split()[0],
                              "--threads", str(args.threads)], capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
        if line is None:
            print(out.stderr[-3000:], file=sys.stderr)
            continue
        rows.append(json.loads(line))
        print(line, flush=True)
    return rows


def first_view(viewer, image, inference, model, view: str, out: Path, what: str) -> dict:
    """Tiled inference in view mode: seconds from Run to the view, with its timeline."""
    from napari_qlty._napari.widgets.inference import MODEL_FILE, VIEW

    if model == MODEL_FILE:
        inference.model_combo.value = MODEL_FILE
    else:
        inference.model_combo.value = model
    inference.order_combo.value = VIEW
    inference.output_edit.value = out
    set_view(viewer, image, view.split()[0])
    line = Timeline()

    def on_event(e):
        line.mark(e.kind if e.kind != "region" else "first region")
        if inference.view_ready_s is not None:
            line.mark("view")

    inference.run()
    line.t0 = inference._t_run
    inference.worker.yielded.connect(on_event)
    wait(inference)
    if inference.outcome != "done":
        raise RuntimeError(inference.status.value)
    return {"what": f"Tiled inference, first view, {what}", "view": view,
            "seconds": round(inference.view_ready_s, 2) if inference.view_ready_s is not None else None,
            "timeline": line.marks, "regions": inference.last_event.regions_total}


def fresh(args) -> None:
    from napari_qlty._napari.widgets.inference import MODEL_FILE, InferenceWidget

    viewer = viewer_with_sample(args.threads)
    inference = InferenceWidget(viewer)
    viewer.window.add_dock_widget(inference)
    inference.model_path.value = args.fresh  # its window and inference settings come with it
    out = Path(tempfile.mkdtemp(prefix="bench-view-fresh-")) / "p.zarr"
    row = first_view(viewer, viewer.layers["tomogram"], inference, MODEL_FILE, args.view, out,
                     "model file in a fresh session")
    print(json.dumps(row), flush=True)
    viewer.close()


def table(rows: list[dict]) -> str:
    lines = ["| measurement | view | seconds | timeline (s) |", "|---|---|---|---|"]
    for r in rows:
        marks = ", ".join(f"{k} {v}" for k, v in r["timeline"].items())
        lines.append(f"| {r['what']} | {r['view']} | {r['seconds']} | {marks} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads while predicting (training takes 1)")
    p.add_argument("--budget", type=float, default=60.0, help="Train's time budget (s)")
    p.add_argument("--more", type=float, default=20.0, help="Train more's time budget (s)")
    p.add_argument("--fresh", help=argparse.SUPPRESS)
    p.add_argument("--view", default="whole", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fresh:
        fresh(args)
        return 0
    rows = loop(args)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
