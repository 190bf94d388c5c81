"""Where the model is unsure, in the viewer: an uncertainty layer, and the most unsure
spots as a ranked Points layer to jump through ("where to label next").

A prediction run with ``uncertainty=True`` writes an "uncertainty" image beside the
probabilities (:mod:`napari_qlty.core.uncertainty`: the overlapping windows'
disagreement, an ensemble's networks' disagreement, the entropy of the classes).
:class:`UnsureFields` gives a widget the controls (write it, which kind to show, "Next
unsure spot") and keeps the two layers; the windows are ranked by their mean
uncertainty with :func:`~napari_qlty.core.uncertainty.rank_spots`, at a coarse
pyramid level when the store has one (the ranking then reads little).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton

from ..core.grid import Grid
from ..core.uncertainty import KINDS, PREFERRED, Spot, default_kind, rank_spots, spot_grid
from ._common import error_text, store_views

if TYPE_CHECKING:
    import napari

    from ..io.prediction import Prediction

#: how each kind is said in the widgets
KIND_WORDS = {"windows": "windows disagree", "members": "networks disagree", "entropy": "class entropy"}
TOP = 20


def ranking_level(store: Prediction, grid: Grid) -> tuple[int, int]:
    """(level, factor): the coarsest level of ``store`` that is equally coarser along every
    tiled axis and still gives each window at least 4 voxels per axis (0, 1 if none)."""
    best = (0, 1)
    for level, info in enumerate(store.layout["levels"]):
        factor = set(int(f) for f in info["factor"])
        if len(factor) == 1:
            f = factor.pop()
            if min(grid.window) >= 4 * f and f > best[1]:
                best = (level, f)
    return best


def unsure_windows(store: Prediction, kind: str, grid: Grid, top: int = TOP) -> list[Spot]:
    """The ``top`` windows of ``grid`` with the highest mean ``kind`` uncertainty, best
    first (origins and centres in full-resolution voxels of the prediction)."""
    kinds = list(store.layout.get("uncertainty") or ())
    if kind not in kinds:
        raise ValueError(f"the prediction holds no '{KIND_WORDS.get(kind, kind)}' uncertainty")
    level, factor = ranking_level(store, grid)
    score = np.asarray(store.uncertainty(level)[:, kinds.index(kind)], dtype=np.float32)
    return rank_spots(score, grid, top, scale=factor)


class UnsureFields:
    """An "uncertainty" check box, the kind to show, and "Next unsure spot", owned by a
    widget; the uncertainty layer and the unsure windows' Points layer they drive."""

    def __init__(self, viewer: napari.viewer.Viewer, on_jump=None) -> None:
        self.viewer = viewer
        #: called with (rank, score) after each jump (the widget says where the view went)
        self.on_jump = on_jump
        #: what the store holds (the kind choices follow it)
        self.kinds: list[str] = list(KINDS)
        self.check = CheckBox(value=False, text="uncertainty")
        self.check.tooltip = ("Also write where the model is unsure, show it as a layer, and list the most "
                              "unsure windows: label there next")
        self.kind_combo = ComboBox(
            label="show", choices=self._kind_choices, value=PREFERRED[0], visible=False,
            tooltip="Which uncertainty to show and rank windows by: the overlapping windows' disagreement, "
                    "an ensemble's networks' disagreement, or the entropy of the class probabilities",
        )
        self.next_button = PushButton(text="Next unsure spot", visible=False)
        self.next_button.tooltip = "Move the view to the next most unsure window (the list goes from most unsure)"
        self.row = Container(widgets=[self.check, self.kind_combo, self.next_button], layout="horizontal",
                             labels=False)
        self.row.margins = (0, 0, 0, 0)
        self.check.changed.connect(self._on_check)
        self.kind_combo.changed.connect(self._on_kind)
        self.next_button.changed.connect(self._on_next)
        self.layer = None
        self.spots_layer = None
        self.spots: list[Spot] = []
        self.current = -1
        self._store = None
        self._grid = None
        self._where: dict = {}
        self._each = False
        self._name = "prediction"
        self._showing = False

    @property
    def wanted(self) -> bool:
        return bool(self.check.value)

    def _kind_choices(self, _widget=None):
        return [(KIND_WORDS[k], k) for k in self.kinds]

    def _on_check(self, *_) -> None:
        self.kind_combo.visible = self.wanted

    def _on_kind(self, *_) -> None:
        if self._store is not None and not self._showing:
            self.show(self._store, self._where, self._each, self._name)
            if self._grid is not None and self.spots:
                self.rank(self._grid)

    # -- layers -----------------------------------------------------------------------------
    def show(self, store: Prediction, where: dict, each_time_point: bool, name: str) -> None:
        """Show (or re-point) the uncertainty layer of ``store`` (if it holds uncertainty)."""
        kinds = list(store.layout.get("uncertainty") or ())
        if not kinds:
            return
        self._store, self._where, self._each, self._name = store, where, each_time_point, name
        self._showing = True
        try:
            wanted = self.kind_combo.value
            if kinds != self.kinds:
                self.kinds = kinds
                self.kind_combo.reset_choices()
            self.kind_combo.value = wanted if wanted in kinds else default_kind(kinds)
            self.kind_combo.visible = True
        finally:
            self._showing = False
        kind = self.kind_combo.value
        data, multiscale = store_views(store, "uncertainty", kinds.index(kind), image=None if each_time_point else 0)
        title = f"{name} · unsure ({KIND_WORDS[kind]})"
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.data = data
            self.layer.name = title
            self.layer.contrast_limits = self._limits(store, kind)
        else:
            # additive over the image: a colormap from black adds nothing where the model is sure
            self.layer = self.viewer.add_image(
                data, name=title, colormap="green", opacity=0.6, blending="additive", visible=True,
                contrast_limits=self._limits(store, kind), multiscale=multiscale, **where)

    @staticmethod
    def _limits(store: Prediction, kind: str) -> tuple[float, float]:
        """Contrast of a kind: the entropy's range for the classes, half the classes'
        variance bound for disagreements (probabilities differ by at most 1)."""
        classes = max(2, int(store.layout["channels"]))
        return (0.0, math.log(classes)) if kind == "entropy" else (0.0, 0.5)

    def refresh(self) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.refresh()

    def rank(self, grid: Grid, top: int = TOP) -> None:
        """List the ``top`` most unsure spots as a Points layer at their centres: windows of
        half ``grid``'s (:func:`~napari_qlty.core.uncertainty.spot_grid`)."""
        if self._store is None:
            return
        kind = self.kind_combo.value
        self._grid = grid
        grid = spot_grid(grid.shape, grid.window)
        self.spots = unsure_windows(self._store, kind, grid, top)
        coords = np.asarray([([spot.image] if self._each else []) + list(spot.centre) for spot in self.spots],
                            dtype=np.float64)
        ndim = grid.ndim + (1 if self._each else 0)
        coords = coords.reshape(-1, ndim)
        features = {"rank": np.arange(1, len(self.spots) + 1), "score": [spot.score for spot in self.spots]}
        size = float(min(grid.window))
        name = f"{self._name} · unsure spots"
        if self.spots_layer is not None and self.spots_layer in self.viewer.layers:
            self.spots_layer.data = coords
            self.spots_layer.features = features
            self.spots_layer.size = size
            self.spots_layer.name = name
        else:
            self.spots_layer = self.viewer.add_points(
                coords, name=name, features=features, symbol="square", size=size, face_color="transparent",
                border_color="#ffd21f", border_width=0.08,
                text={"string": "{rank}", "color": "#ffd21f", "size": 10, "anchor": "upper_left"},
                **self._where)
        self.current = -1
        self.next_button.visible = bool(self.spots)

    def try_rank(self, grid: Grid | None) -> str | None:
        """:meth:`rank` when there is an uncertainty layer and a grid; what went wrong, in
        words for the widget's status, when ranking failed (the prediction itself is fine)."""
        if self.layer is None or grid is None:
            return None
        try:
            self.rank(grid)
        except Exception as e:  # noqa: BLE001 - said in the widget
            return f"Could not rank the unsure windows: {error_text(e)}"
        return None

    def jump_text(self, rank: int, score: float) -> str:
        """``Unsure spot 2 of 20 (mean networks disagree 0.05)``: where a jump went."""
        return f"Unsure spot {rank} of {len(self.spots)} (mean {KIND_WORDS[self.kind_combo.value]} {score:.3g})"

    def _on_next(self, *_) -> None:
        spot = self.next_spot()
        if spot is not None and self.on_jump is not None:
            self.on_jump(*spot)

    def next_spot(self) -> tuple[int, float] | None:
        """Move the view to the next unsure window (after the last, back to the first):
        its centre becomes the dims' point and the camera's centre. Returns (rank, score)."""
        layer = self.spots_layer
        if not self.spots or layer is None or layer not in self.viewer.layers:
            return None
        self.current = (self.current + 1) % len(self.spots)
        go_to(self.viewer, layer, layer.data[self.current])
        layer.selected_data = {self.current}
        return self.current + 1, self.spots[self.current].score

    def forget(self, event) -> None:
        """A layer was removed from the viewer."""
        if event.value is self.layer:
            self.layer = None
        if event.value is self.spots_layer:
            self.spots_layer, self.spots = None, []
            self.next_button.visible = False


def go_to(viewer: napari.viewer.Viewer, layer, data_point) -> None:
    """Centre the view on ``data_point`` of ``layer``: the dims go to its slice (or time
    point) and the camera to its position along the displayed axes."""
    world = np.asarray(layer.data_to_world(np.asarray(data_point, dtype=np.float64)), dtype=np.float64)
    ndim = viewer.dims.ndim
    pad = ndim - len(world)
    viewer.dims.set_point(range(pad, ndim), tuple(world))
    displayed = [a - pad for a in viewer.dims.displayed]
    if all(a >= 0 for a in displayed):
        viewer.scene.camera.center = tuple(world[displayed])
