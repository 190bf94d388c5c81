"""Running a model over a volume in memory, window batch by window batch.

Memory stays at input + output + two batches (windows in, outputs out): windows are
cut into one reused buffer in the volume's own dtype (a uint8 volume moves a quarter of
the bytes of float32), moved to the device, cast there to the model's dtype and
normalised, and each batch's outputs are added to the weighted sum before the next
batch is cut.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from .blend import Accumulator, accumulation_dtype, check_patches, fused_for
from .feed import feed_windows
from .grid import Grid
from .intensity import IDENTITY, Fitted, Normalisation
from .processing import FittedProcessing, Processing
from .speed import Speed, sped_up
from .tiles import as_tensor, check_volume, pad_far_end
from .uncertainty import gives_probabilities, split, spread_of, with_moments
from .weights import Weighting, WindowWeights, window_weights

Model = Callable[[torch.Tensor], torch.Tensor]

#: the attribute under which a model carries the normalisation it was trained with
NORMALISATION_ATTRIBUTE = "napari_qlty_normalisation"
#: the attribute under which a model carries what is done to its blended output (a
#: bioimage.io package's postprocessing): applied once the windows are blended
POSTPROCESSING_ATTRIBUTE = "napari_qlty_postprocessing"


def input_dtype(model) -> torch.dtype | None:
    """The dtype a model computes in: that of its first floating parameter or buffer.

    None for a callable without any: it gets floating windows in their own dtype and
    all others (bool, integers) as float32.
    """
    for name in ("parameters", "buffers"):
        tensors = getattr(model, name, None)
        if callable(tensors):
            try:
                for t in tensors():
                    if t.is_floating_point():
                        return t.dtype
            except (TypeError, RuntimeError):
                pass
    return None


def for_inference(model: Model, device: torch.device | str | None = None) -> Model:
    """``model`` ready to run without changing the caller's: an ``nn.Module`` in training
    mode, or with weights on another device, becomes a private copy in eval mode on
    ``device``; one already in eval mode there is used as it is (inference without
    gradients changes nothing in it). Other callables are returned as they are."""
    if not isinstance(model, torch.nn.Module):
        return model
    device = torch.device(device) if device is not None else None
    tensors = list(model.parameters()) + list(model.buffers())
    elsewhere = device is not None and any(t.device != device for t in tensors)
    training = any(m.training for m in model.modules())
    if not (elsewhere or training):
        return model
    private = copy.deepcopy(model)
    if device is not None:
        private = private.to(device)
    return private.eval()


def feed_dtype(model, stored) -> torch.dtype:
    """The dtype ``model`` receives windows in when they are stored as ``stored``."""
    dtype = input_dtype(model)
    if dtype is not None:
        return dtype
    stored = torch.empty(0, dtype=stored).dtype if isinstance(stored, torch.dtype) else \
        torch.from_numpy(np.empty(0, dtype=stored)).dtype
    return stored if stored.is_floating_point else torch.float32


def model_normalisation(model) -> Normalisation | Fitted | Processing | FittedProcessing | None:
    """The normalisation ``model`` was trained with (or its package declares), if any."""
    found = getattr(model, NORMALISATION_ATTRIBUTE, None)
    return found if isinstance(found, (Normalisation, Fitted, Processing, FittedProcessing)) else None


def fit_postprocessing(model, volume) -> FittedProcessing | None:
    """What ``model`` says to do to its blended output, with any statistics it takes from the
    input measured over the whole ``volume``; None when it says nothing."""
    found = getattr(model, POSTPROCESSING_ATTRIBUTE, None)
    if isinstance(found, Processing):
        found = found.fit(volume)
    return None if not isinstance(found, FittedProcessing) or found.identity else found


def fit_normalisation(normalise, volume, model) -> Fitted | FittedProcessing:
    """``normalise`` (None: the model's own, else none) with its statistics over ``volume``."""
    if normalise is None:
        normalise = model_normalisation(model) or Normalisation()
    if isinstance(normalise, str):
        normalise = Normalisation(normalise)
    if isinstance(normalise, (Fitted, FittedProcessing)):
        return normalise
    if not isinstance(normalise, (Normalisation, Processing)):
        raise TypeError(f"normalise must be a Normalisation or a mode name, got {type(normalise).__name__}")
    return normalise.fit(volume)


def to_model(batch: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
             intensity: Fitted | FittedProcessing = IDENTITY) -> torch.Tensor:
    """A batch of windows in its stored dtype, as the model takes it: moved to ``device``
    first (the stored bytes travel), then cast to ``dtype`` (see :func:`input_dtype`) and
    normalised there.

    The batch must be a buffer of the caller's own (it may be normalised in place).
    """
    if batch.device != device:
        batch = batch.to(device, non_blocking=True)
    if dtype is None:
        dtype = batch.dtype if batch.is_floating_point() else torch.float32
    if batch.dtype != dtype:
        batch = batch.to(dtype)
    return intensity.apply(batch)


def window_order(weights: WindowWeights, n_images: int) -> np.ndarray:
    """All flat window indices, grouped by edge class so each class's weights are built once."""
    per_image = len(weights.grid)
    return np.asarray(
        sorted(range(n_images * per_image), key=lambda i: weights.class_of(i % per_image)),
        dtype=np.int64,
    )


def check_output(out: torch.Tensor, batch: torch.Tensor, grid: Grid) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a torch.Tensor, got {type(out).__name__}")
    if out.ndim != batch.ndim or out.shape[0] != batch.shape[0] or tuple(out.shape[2:]) != grid.window:
        raise ValueError(
            f"the model's output {tuple(out.shape)} does not fit its input {tuple(batch.shape)}: "
            f"it must be (batch, classes, {', '.join(map(str, grid.window))})"
        )


@torch.no_grad()
def infer(
    model: Model,
    x: torch.Tensor | np.ndarray,
    grid: Grid,
    weighting: Weighting = Weighting(),
    *,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    postprocess: Model | None = None,
    normalise: Normalisation | Fitted | Processing | FittedProcessing | str | None = None,
    fused: bool | None = None,
    speed: Speed | None = None,
    uncertainty: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Apply ``model`` to every window of ``x`` (N, C, *shape) and blend: (N, C_out, *shape).

    ``x`` may have any dtype (bool, integers, floats); windows are cast on the device to
    the model's dtype (:func:`input_dtype`). ``normalise`` maps intensities with
    statistics of the whole of ``x`` (see :mod:`napari_qlty.core.intensity`); None uses
    the normalisation the model was trained with, if it carries one, else the stored
    values. Windows run on ``device`` (default: the input's); the weighted sum lives
    there too. ``postprocess`` (e.g. ``lambda y: y.softmax(1)``) is applied to each
    batch of outputs before blending; a model that carries postprocessing (a bioimage.io
    package's) has it applied to the blended result, as to the output of one whole-volume
    run. Each window goes through the model exactly once.
    ``fused`` cuts and adds each batch in a fixed number of operators (default: on
    accelerators, where every operator costs a kernel launch; see
    :func:`~napari_qlty.core.blend.fused_for`). ``speed`` runs the model in lower
    precision, channels-last or compiled (:class:`~napari_qlty.core.speed.Speed`; off by
    default). With ``uncertainty`` it returns ``(result, uncertainty)``, the second
    (N, K, *shape) with the channels :func:`napari_qlty.core.uncertainty.kinds` names
    (see :mod:`napari_qlty.core.uncertainty`).
    """
    x = as_tensor(x)
    check_volume(x, grid, "input")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else x.device
    intensity = fit_normalisation(normalise, x, model)
    finishing = fit_postprocessing(model, x)
    model = for_inference(model, device)
    dtype = input_dtype(model)
    spread = spread_of(model) if uncertainty else None
    probabilities = gives_probabilities(model, postprocess)
    model = sped_up(model, speed or Speed(), device, grid.ndim)
    weights = window_weights(grid, weighting)
    if grid.needs_padding:
        x = pad_far_end(x, grid.padded_shape, grid.pad)
    n_images = x.shape[0]
    fused = fused_for(device) if fused is None else fused
    acc: Accumulator | None = None
    order = window_order(weights, n_images)
    classes = None
    for idx, batch in feed_windows(x, grid, order, batch_size, device, fused=fused):
        batch_in = to_model(batch, device, dtype, intensity)
        out, members = spread(batch_in) if spread is not None else (model(batch_in), None)
        check_output(out, batch, grid)
        if postprocess is not None:
            out = postprocess(out)
        classes = out.shape[1]
        if uncertainty:
            out = with_moments(out, members)
        if acc is None:
            check_patches(out, grid)
            acc = Accumulator(
                weights, n_images, out.shape[1], device=out.device,
                dtype=accumulation_dtype(out.dtype),
            )
        acc.add_batch(out, idx, fused=fused)
    assert acc is not None
    result = acc.result()
    if not uncertainty:
        return result if finishing is None else finishing.apply(result)
    if finishing is not None:
        probabilities = finishing.gives_probabilities
    return split(result, classes, spread is not None, probabilities, dim=1,
                 finish=None if finishing is None else finishing.apply)
