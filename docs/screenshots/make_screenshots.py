"""Screenshots of the napari-qlty widgets for the user guide.

Opens napari with the small synthetic tomogram (File > Open Sample > napari-qlty), uses
each widget the way a person would, and saves PNGs next to this script::

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/screenshots/make_screenshots.py

(on a machine with a screen, drop ``xvfb-run``). The inference screenshots use a small
network trained here for a few seconds on the exported sparse labels, offered to the
inference widget with ``napari_qlty._napari.register_model``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WINDOW_SIZE = (1600, 1000)
MAX_BYTES = 400_000


def process_events(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_for(condition, timeout: float = 300.0, widget=None) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not condition():
        if widget is not None and getattr(widget, "outcome", None) == "error":
            raise RuntimeError(widget.status.value)
        if time.perf_counter() > end:
            raise TimeoutError("the widget did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)


def save(viewer, name: str, out: Path, fit: bool = True) -> Path:
    """Grab the whole window; keep the PNG under MAX_BYTES (fewer colours, then smaller)."""
    from PIL import Image

    process_events(0.5)
    if fit:  # the canvas has its final size only now
        viewer.reset_view()
        process_events(0.3)
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(rgba)[..., :3])
    path = out / f"{name}.png"
    for attempt in range(6):
        candidate = image if attempt == 0 else image.quantize(colors=256 if attempt < 3 else 128, dither=Image.Dither.NONE)
        if attempt >= 2:
            factor = 0.85 ** (attempt - 1)
            size = (int(image.width * factor), int(image.height * factor))
            candidate = candidate.convert("RGB").resize(size, Image.Resampling.LANCZOS).quantize(
                colors=256, dither=Image.Dither.NONE
            )
        buffer = io.BytesIO()
        candidate.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= MAX_BYTES:
            break
    path.write_bytes(buffer.getvalue())
    print(f"  {path.relative_to(out.parent.parent) if out.parent.parent in path.parents else path}"
          f"  {image.width}x{image.height}  {buffer.tell() / 1024:.0f} KiB")
    return path


def dock(viewer, widget, name: str, width: int = 440):
    from qtpy.QtCore import Qt

    dock_widget = viewer.window.add_dock_widget(widget, name=name, area="right")
    process_events(0.2)
    viewer.window._qt_window.resizeDocks([dock_widget], [width], Qt.Orientation.Horizontal)
    process_events(0.2)
    return dock_widget


def train_small_network(pairs_path: Path, steps: int = 250, seed: int = 0):
    """A small 3D CNN fitted to the exported pairs (cross-entropy, unobserved voxels ignored)."""
    import torch

    from napari_qlty.io.pairs_store import PairsDataset

    torch.manual_seed(seed)
    data = PairsDataset(pairs_path)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.stack([data[i][1] for i in range(len(data))])
    counts = torch.bincount(labels[labels >= 0].flatten(), minlength=2).float()
    weight = (counts.sum() / (2 * counts.clamp(min=1))).clamp(max=20)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv3d(8, 8, 3, padding=2, dilation=2), torch.nn.ReLU(),
        torch.nn.Conv3d(8, 2, 1),
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-1)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(images), size=min(4, len(images)), replace=False))
        optimiser.zero_grad()
        loss = loss_fn(net(images[idx]), labels[idx])
        loss.backward()
        optimiser.step()
    print(f"  trained a small network on {len(images)} pairs, final loss {loss.item():.3f}")
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="napari-qlty-screens-"))

    import napari

    from napari_qlty._napari import register_model
    from napari_qlty._napari.widgets.export_pairs import ExportWidget
    from napari_qlty._napari.widgets.grid_preview import GridPreviewWidget
    from napari_qlty._napari.widgets.inference import InferenceWidget
    from napari_qlty._napari.widgets.labelling import LabellingWidget

    viewer = napari.Viewer(show=True, title="napari-qlty")
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    viewer.open_sample("napari-qlty", "tomogram-small")
    image = viewer.layers["tomogram"]
    sparse = viewer.layers["sparse labels"]
    annotated_z = int(np.argmax((np.asarray(sparse.data) > 0).sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, annotated_z)
    process_events(1.0)

    # 1. grid preview: window outlines and purple seams on a slice, with the export's choice
    print("grid preview")
    grid = GridPreviewWidget(viewer)
    d = dock(viewer, grid, "Grid preview")
    grid.window_edit.value, grid.step_edit.value, grid.border_edit.value = "64", "48", "8"
    grid.labels_combo.value = sparse
    grid.refresh()
    wait_for(lambda: grid.stats is not None)
    viewer.layers.selection.active = image
    save(viewer, "grid_preview", out)
    viewer.dims.ndisplay = 3
    grid.refresh()
    viewer.reset_view()
    process_events(0.3)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.angles = (-15, 30, 125)
    camera.zoom = camera.zoom * 0.8
    save(viewer, "grid_preview_3d", out, fit=False)
    viewer.dims.ndisplay = 2
    viewer.dims.set_current_step(0, annotated_z)
    grid.refresh()
    viewer.window.remove_dock_widget(d)
    for layer in (grid.windows_layer, grid.seams_layer):
        if layer is not None:
            layer.visible = False

    # 2. sparse labelling: a zarr-backed labels layer, started from the sample's strokes
    print("sparse labelling")
    labelling = LabellingWidget(viewer)
    d = dock(viewer, labelling, "Sparse labelling")
    labelling.start_combo.value = sparse
    labelling.path_edit.value = work / "tomogram-labels.zarr"
    labels = labelling.create()
    sparse.visible = False
    labels.brush_size = 4
    truth = np.asarray(viewer.layers["ground truth"].data[annotated_z])
    ys, xs = np.nonzero(truth)
    for k in np.linspace(0, len(ys) - 1, 6).astype(int):  # a few strokes of "filament"
        labels.paint((annotated_z, int(ys[k]), int(xs[k])), 2)
    labels.selected_label = 1
    wait_for(lambda: labelling.counts is not None and not labelling.counting)
    process_events(0.6)
    wait_for(lambda: not labelling.counting)
    labels.mode = "paint"
    save(viewer, "labelling", out)
    viewer.window.remove_dock_widget(d)

    # 3. export: cleaned training pairs with the Table-2 summary
    print("export")
    export = ExportWidget(viewer)
    d = dock(viewer, export, "Export training pairs")
    export.labels_combo.value = labels
    export.window_edit.value, export.step_edit.value, export.border_edit.value = "32", "24", "4"
    export.path_edit.value = work / "tomogram-pairs.zarr"
    export.run()
    wait_for(lambda: not export.running)
    assert export.outcome == "done", export.status.value
    save(viewer, "export", out)
    viewer.window.remove_dock_widget(d)

    # 4. inference: a network trained on those pairs, the map streaming in region by region
    print("inference")
    net = train_small_network(export.path)
    register_model("small 3D CNN (trained on the sparse labels)", net)
    inference = InferenceWidget(viewer)
    d = dock(viewer, inference, "Tiled inference")
    inference.model_combo.value = "small 3D CNN (trained on the sparse labels)"
    inference.device_combo.value = "cpu"
    inference.window_edit.value, inference.step_edit.value, inference.border_edit.value = "64", "48", "8"
    inference.weighting_combo.value = "gaussian"
    inference.chunks_edit.value = "64, 32, 32"  # regions are tiles of the slice: watch them fill
    inference.batch_spin.value = 1
    inference.region_edit.value = "64, 32, 32"  # several regions: watch them fill
    inference.output_edit.value = work / "tomogram-prediction.zarr"
    labels.visible = False
    inference.run()
    wait_for(lambda: inference.last_event is not None and inference.last_event.kind == "region"
             and inference.last_event.regions_done >= inference.last_event.regions_total // 2,
             widget=inference)
    inference.worker.pause()
    wait_for(lambda: inference.worker is None or inference.worker.is_paused, timeout=60)
    save(viewer, "inference_streaming", out)
    inference.worker.resume()
    wait_for(lambda: not inference.running)
    assert inference.outcome == "done", inference.status.value
    save(viewer, "inference", out)
    viewer.window.remove_dock_widget(d)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
