"""qlty's parameters and its in-memory quilts (NCYXQuilt, NCZYXQuilt) over the engine."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..core.blend import stitch
from ..core.grid import Grid, band_profile, per_axis
from ..core.tiles import extract
from ..core.weights import Weighting, WindowWeights

#: qlty clamps the border weight to this floor (``validate_border_weight``); so do we
MIN_BORDER_WEIGHT = 1e-8


# -- parameters ---------------------------------------------------------------------------
def _normalize_border(border, ndim: int) -> tuple[int, ...] | None:
    """qlty's border convention: None when there is no band, else one int per axis."""
    if border is None:
        return None
    if isinstance(border, (int, np.integer)) and not isinstance(border, bool):
        return None if border == 0 else (int(border),) * ndim
    if isinstance(border, (tuple, list)):
        values = per_axis(tuple(border), ndim, "border")
        return None if all(b == 0 for b in values) else values
    raise TypeError(f"border must be an int, a tuple of {ndim} ints or None, got {border!r}")


def _border_weight(border_weight) -> float:
    bw = float(border_weight)
    if not (math.isfinite(bw) and 0.0 <= bw <= 1.0):
        raise ValueError(f"border_weight must be in [0.0, 1.0], got {border_weight}")
    return max(bw, MIN_BORDER_WEIGHT)


def _inside_vectors(window: tuple[int, ...], border: tuple[int, ...] | None) -> list[np.ndarray]:
    """Per axis: 1 outside the band, 0 in it, on both faces of the window (qlty's band)."""
    return [band_profile(w, border[a] if border else 0) for a, w in enumerate(window)]


def _outer_np(vectors: Sequence[np.ndarray]) -> np.ndarray:
    out = vectors[0]
    for v in vectors[1:]:
        out = np.multiply.outer(out, v)
    return out


def observed(labels: torch.Tensor, missing_label) -> torch.Tensor:
    """True where a label is present (NaN ``missing_label`` means NaN is missing)."""
    if isinstance(missing_label, float) and math.isnan(missing_label):
        return ~torch.isnan(labels)
    return labels != missing_label


def as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")


class QuiltBase:
    """Geometry, weights and border conventions shared by all four quilts."""

    _axes: tuple[str, ...] = ()

    def _setup(self, spatial, window, step, border, border_weight) -> None:
        ndim = len(self._axes)
        spatial = tuple(int(s) for s in spatial)
        for name, s in zip(self._axes, spatial):
            if s < 1:
                raise ValueError(f"{name} must be a positive int, got {s}")
        window = per_axis(window, ndim, "window")
        step = per_axis(step, ndim, "step")
        for a, (name, s, w) in enumerate(zip(self._axes, spatial, window)):
            if w > s:
                raise ValueError(
                    f"window[{a}]={w} is larger than {name}={s}: every window must fit inside "
                    f"the volume (qlty would cut windows at negative origins here); choose "
                    f"window[{a}] <= {s}, or pad the data to at least {w} along {name} first"
                )
        self.window = window
        self.step = step
        self.border = _normalize_border(border, ndim)
        self.border_weight = _border_weight(border_weight)
        self.grid = Grid(spatial, window, step, self.border or 0)
        self.weighting = Weighting("border", border_weight=self.border_weight)
        self._weights = WindowWeights(self.grid, self.weighting)
        for name, count in zip(self._axes, self.grid.counts):
            setattr(self, "n" + name, int(count))

    def get_times(self) -> tuple[int, ...]:
        """Windows along each spatial axis, e.g. ``(nY, nX)``; ``prod`` of them per image."""
        return tuple(int(c) for c in self.grid.counts)

    def _weight_np(self) -> np.ndarray:
        """qlty's per-window weight matrix: 1 inside, ``border_weight`` in the band.

        Stitching uses the engine's per-window weights instead, which equal this matrix
        except on window faces lying on the volume's edge (kept at full weight).
        """
        inside = _outer_np(_inside_vectors(self.window, self.border))
        return self.border_weight + (1.0 - self.border_weight) * inside

    def _border_np(self) -> np.ndarray:
        return _outer_np(_inside_vectors(self.window, self.border)).astype(np.float64)

    def _band(self, device=None) -> torch.Tensor:
        """True in the label band (qlty's: on every face of the window)."""
        return torch.from_numpy(self._border_np() < 0.5).to(device)

    def _positions(self, n_images: int, include_n: bool, device=None) -> torch.Tensor:
        origins = torch.from_numpy(self.grid.origins().copy())
        pos = origins.repeat(n_images, 1)
        if include_n:
            n = torch.arange(n_images).repeat_interleave(len(self.grid)).unsqueeze(1)
            pos = torch.cat([n, pos], dim=1)
        return pos.to(dtype=torch.int64, device=device)

    def _check_volume(self, tensor, what: str) -> None:
        ndim = len(self._axes)
        if tensor.ndim != ndim + 2:
            raise ValueError(
                f"{what} must be (N, C, {', '.join(self._axes)}), got shape {tuple(tensor.shape)}"
            )
        if tuple(tensor.shape[2:]) != self.grid.shape:
            raise ValueError(
                f"{what} has spatial shape {tuple(tensor.shape[2:])} but this quilt was made for "
                f"{self.grid.shape}"
            )

    def _pair_labels(self, tensor_in, tensor_out):
        """Checks a (data, labels) pair; labels get a channel axis if they have none."""
        ndim = len(self._axes)
        tensor_in = as_tensor(tensor_in, "tensor_in")
        tensor_out = as_tensor(tensor_out, "tensor_out")
        squeezed = tensor_out.ndim == ndim + 1
        if squeezed:
            tensor_out = tensor_out.unsqueeze(1)
        self._check_volume(tensor_in, "tensor_in")
        self._check_volume(tensor_out, "tensor_out")
        if tensor_in.shape[0] != tensor_out.shape[0]:
            raise ValueError(
                f"tensor_in has {tensor_in.shape[0]} images but tensor_out has "
                f"{tensor_out.shape[0]}"
            )
        return tensor_in, tensor_out, squeezed


# -- in-memory quilts ---------------------------------------------------------------------
class _InMemoryQuilt(QuiltBase):
    def border_tensor(self) -> torch.Tensor:
        """1 outside the border band, 0 in it (on every face), as a float32 tensor."""
        return torch.from_numpy(self._border_np()).to(torch.float32)

    def _unstitch(self, tensor) -> torch.Tensor:
        tensor = as_tensor(tensor, "tensor")
        self._check_volume(tensor, "tensor")
        return extract(tensor, self.grid)

    def _unstitch_pair(self, tensor_in, tensor_out, missing_label):
        tensor_in, tensor_out, squeezed = self._pair_labels(tensor_in, tensor_out)
        patches_in = extract(tensor_in, self.grid)
        patches_out = extract(tensor_out, self.grid)
        if missing_label is not None and self.border is not None:
            patches_out[:, :, self._band(patches_out.device)] = missing_label
        if squeezed:
            patches_out = patches_out.squeeze(1)
        return patches_in, patches_out

    def stitch(self, ml_tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend all windows back: ``(mean (N, C, *shape), norma (*shape))``.

        ``norma`` is the total weight per voxel (the engine's exact normaliser). Sums run
        in torch on the patches' device (float32; float64 stays float64).
        """
        patches = as_tensor(ml_tensor, "ml_tensor")
        return stitch(patches, self.grid, self._weights, return_weight=True)


class NCYXQuilt(_InMemoryQuilt):
    """Split (N, C, Y, X) tensors into overlapping windows and stitch them back (qlty API).

    Parameters are qlty 1.5.0's: ``Y, X`` the image size, ``window`` and ``step`` as
    ``(Ysub, Xsub)`` and ``(Ystep, Xstep)`` (an int is accepted for both axes), ``border``
    the band (int, tuple or None) whose predictions are down-weighted by ``border_weight``.
    """

    _axes = ("Y", "X")

    def __init__(self, Y: int, X: int, window, step, border, border_weight: float = 1.0) -> None:
        self.Y = int(Y)
        self.X = int(X)
        self._setup((Y, X), window, step, border, border_weight)
        self.weight = torch.from_numpy(self._weight_np()).to(torch.float32)

    def unstitch(
        self,
        tensor,
        return_positions: bool = False,
        include_n_position: bool = False,
        add_positional_channels: bool = False,
        normalize_positions: bool = True,
        position_mode: str = "absolute",
    ):
        """Windows (N * nY * nX, C, *window) in qlty's order; with ``return_positions``
        also their origins, (M, 2) ``[y, x]`` or (M, 3) ``[n, y, x]`` int64."""
        if add_positional_channels:
            raise NotImplementedError(
                "napari_qlty.compat does not support add_positional_channels; concatenate "
                "coordinate channels yourself (origins come from return_positions=True)"
            )
        tensor = as_tensor(tensor, "tensor")
        patches = self._unstitch(tensor)
        if return_positions:
            return patches, self._positions(tensor.shape[0], include_n_position, tensor.device)
        return patches

    def unstitch_data_pair(
        self,
        tensor_in,
        tensor_out,
        missing_label: float | None = None,
        return_positions: bool = False,
        include_n_position: bool = False,
        add_positional_channels: bool = False,
        normalize_positions: bool = True,
        position_mode: str = "absolute",
    ):
        """Windows of data (N, C, Y, X) and labels (N, Y, X) or (N, C, Y, X).

        With ``missing_label`` the labels' border band (every face, qlty's
        ``border_tensor``) is set to it. Returns ``(patches_in, patches_out)``, plus the
        positions with ``return_positions``.
        """
        if add_positional_channels:
            raise NotImplementedError("napari_qlty.compat does not support add_positional_channels")
        patches_in, patches_out = self._unstitch_pair(tensor_in, tensor_out, missing_label)
        if return_positions:
            n = patches_in.shape[0] // len(self.grid)
            positions = self._positions(n, include_n_position, patches_in.device)
            return patches_in, patches_out, positions
        return patches_in, patches_out

    def stitch(self, ml_tensor, use_numba: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend all windows back: ``(mean (N, C, Y, X), norma (Y, X))``.

        ``use_numba`` is accepted and ignored: stitching is torch, on the patches' device.
        """
        return super().stitch(ml_tensor)


class NCZYXQuilt(_InMemoryQuilt):
    """Split (N, C, Z, Y, X) tensors into overlapping windows and stitch them back (qlty API).

    Unlike qlty 1.5.0 the last window along each axis is stepped back to end on the far
    edge, so any ``Z, Y, X >= window`` works.
    """

    _axes = ("Z", "Y", "X")

    def __init__(
        self, Z: int, Y: int, X: int, window, step, border, border_weight: float = 0.1
    ) -> None:
        self.Z = int(Z)
        self.Y = int(Y)
        self.X = int(X)
        self._setup((Z, Y, X), window, step, border, border_weight)
        self.weight = torch.from_numpy(self._weight_np()).to(torch.float32)

    def unstitch(self, tensor) -> torch.Tensor:
        """Windows (N * nZ * nY * nX, C, *window) in qlty's order (n, z, y, x)."""
        return self._unstitch(tensor)

    def unstitch_data_pair(self, tensor_in, tensor_out, missing_label: float | None = None):
        """Windows of data (N, C, Z, Y, X) and labels (N, Z, Y, X) or (N, C, Z, Y, X).

        ``missing_label`` (an addition: qlty's 3D quilt has none) sets the labels' border
        band, on every face, to that value.
        """
        return self._unstitch_pair(tensor_in, tensor_out, missing_label)
