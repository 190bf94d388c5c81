"""Training a network on sparse pairs: masked cross-entropy, Adam, validation, checkpoints.

:func:`iter_train` is a generator of :class:`TrainEvent` objects (a step, an epoch with
its validation scores, the end), so the command line prints them, a widget can plot
them, and a test can stop after two steps. ``stop`` (a callable or a
``threading.Event``) ends the run cleanly after the current step::

    from napari_qlty.io.pairs_store import PairsDataset
    from napari_qlty.train import TrainConfig, iter_train

    train, val = PairsDataset("pairs.zarr").split(0.2)
    config = TrainConfig(arch="unet", net={"channels": 8}, epochs=10)
    for event in iter_train(config, train, val, checkpoint="unet.pt"):
        print(event.line())

A checkpoint is a state dict (``unet.pt``) plus a JSON file beside it (``unet.json``)
naming the factory and its arguments, so :func:`checkpoint_spec` gives the
:class:`napari_qlty.models.ModelSpec` that reloads it anywhere (the CLI, a dask worker).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.intensity import Fitted
from ..core.pairs import IGNORE
from ..io import formats
from ..models import ModelSpec, load_model, resolve_device
from ..models.checkpoints import checkpoint_recipe, write_checkpoint
from ..models.loading import describe
from .data import Batch, PlanarSampler, VolumeSampler, as_pairs
from .metrics import confusion_matrix, f1_scores
from .networks import ARCHITECTURES, FACTORIES, fold_batchnorm, planar

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "build_model",
    "checkpoint_spec",
    "class_weights",
    "iter_train",
    "load_checkpoint",
    "masked_cross_entropy",
    "save_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = formats.CHECKPOINT


# -- the loss --------------------------------------------------------------------------------
def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over labelled voxels only (``labels == ignore_index`` contribute nothing).

    The weighted mean over labelled voxels, as ``F.cross_entropy``; a batch without any
    labelled voxel gives a zero loss (with zero gradient) instead of NaN.
    """
    labels = labels.long()
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index)


def class_weights(counts: Sequence[int], power: float = 0.5) -> torch.Tensor:
    """Inverse-frequency weights ``(total / (classes * count)) ** power``.

    ``power=1`` balances the classes fully, ``0`` not at all; ``0.5`` (the default) is a
    compromise: the rare class is learnt, without pushing its boundary into the
    unlabelled margin that painted annotations leave around objects. Classes without
    labels get weight 0.
    """
    c = np.asarray(counts, dtype=np.float64)
    total, k = c.sum(), len(c)
    with np.errstate(divide="ignore"):
        w = np.where(c > 0, (total / (k * np.maximum(c, 1))) ** power, 0.0)
    return torch.tensor(w, dtype=torch.float32)


# -- configuration and events ------------------------------------------------------------
#: the networks the demo settled on (docs/demo.md): a 2-level U-Net with batch norm (folded
#: into its convolutions when saved), and a 20-layer mixed-scale dense network
DEFAULT_NETS: dict[str, dict] = {
    "unet": {"channels": 8, "levels": 2, "norm": "batch"},
    "msdnet": {"layers": 20, "width": 1, "max_dilation": 8},
}


@dataclass
class TrainConfig:
    """What to train and how. Plain data: it is written into every checkpoint's JSON."""

    arch: str = "unet"
    """``"unet"`` or ``"msdnet"``."""
    net: dict | None = None
    """Keyword arguments of the network (``channels``, ``levels``; ``layers``, ``width``,
    ``max_dilation``; ``norm``). None: the architecture's :data:`DEFAULT_NETS` entry."""
    planar: bool = True
    """True: a 2D network on 2.5D slices (:class:`~napari_qlty.train.networks.Planar`);
    False: a network with as many dimensions as the pairs' windows."""
    context: int = 2
    """Planar: neighbouring slices on either side given as channels."""
    axes: tuple[int, ...] = (0,)
    """Planar: orientations averaged at inference (0: XY slices, 1: XZ, 2: YZ). XY alone
    costs a third of all three, which scored within -0.025 to +0.011 of it (docs/demo.md)."""
    train_axes: tuple[int, ...] = (0, 1, 2)
    """Planar: orientations sampled in training."""
    classes: int = 2
    patch: int = 48
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 50
    lr: float = 3e-3
    final_lr: float = 1e-4
    """The learning rate decays along a cosine from ``lr`` to ``final_lr``, over the
    steps or over ``max_seconds``, whichever runs out first (so a run cut short by its
    time budget still ends at a small learning rate)."""
    weight_decay: float = 0.0
    class_weight_power: float | None = 0.5
    """Inverse-frequency class weights to this power (None: no weights)."""
    calibrate: bool = False
    """Undo the class weights' shift of the decision boundary in the saved and returned
    model (logit adjustment: ``log(weight)`` is subtracted from each class's output
    bias), so its probabilities follow the labelled class frequencies again."""
    balance: float = 0.0
    """Share of samples centred on a class drawn uniformly (rare classes more often)."""
    augment: bool = True
    intensity: float = 0.1
    val_samples: int = 32
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    """If set, torch's threads while training (restored after; on a small or shared CPU,
    1 is often several times faster than more)."""
    max_seconds: float | None = None
    """Stop after this much training time (checked every step); None: no limit."""
    log_every: int = 1

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "patch", "classes", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.axes = tuple(int(a) for a in self.axes)
        self.train_axes = tuple(int(a) for a in self.train_axes)
        self.net = dict(DEFAULT_NETS[self.arch] if self.net is None else self.net)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def learning_rate(self, step: int, elapsed: float = 0.0) -> float:
        """The learning rate of step ``step`` (0-based) taken ``elapsed`` seconds in."""
        progress = step / self.steps
        if self.max_seconds is not None:
            progress = max(progress, elapsed / self.max_seconds) if self.max_seconds > 0 else 1.0
        progress = min(1.0, progress)
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + math.cos(math.pi * progress))

    def factory(self, ndim: int = 3) -> tuple[str, dict]:
        """``(factory path, kwargs)`` that build this model (for ModelSpec and checkpoints)."""
        if self.planar:
            kwargs = {"arch": self.arch, "context": self.context, "axes": list(self.axes),
                      "classes": self.classes, **self.net}
            return FACTORIES["planar"], kwargs
        return FACTORIES[self.arch], {"dims": ndim, "classes": self.classes, **self.net}

    def to_json(self) -> dict:
        d = asdict(self)
        d["axes"], d["train_axes"] = list(self.axes), list(self.train_axes)
        return d


@dataclass(frozen=True)
class TrainEvent:
    """``kind``: "start", "step", "epoch", "done" or "stopped"."""

    kind: str
    step: int
    steps: int
    epoch: int
    epochs: int
    elapsed: float
    loss: float | None = None
    """Mean training loss over the steps since the last event of the same kind."""
    lr: float | None = None
    val_loss: float | None = None
    val_f1: float | None = None
    """Macro F1 on the labelled voxels of the validation samples."""
    val_f1_per_class: tuple[float, ...] | None = None
    checkpoint: str | None = None
    message: str = ""
    member: str | None = None
    """Which network of an ensemble this event is about (None: the only one)."""

    def line(self) -> str:
        parts = [f"{self.kind:<7}", f"epoch {self.epoch}/{self.epochs}", f"step {self.step}/{self.steps}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_loss is not None:
            parts.append(f"val loss {self.val_loss:.4f}")
        if self.val_f1 is not None:
            parts.append(f"val F1 {self.val_f1:.3f}")
        parts.append(f"{self.elapsed:.1f} s")
        if self.message:
            parts.append(self.message)
        return "  ".join(parts)


@dataclass
class TrainResult:
    model: torch.nn.Module
    config: TrainConfig
    events: list[TrainEvent]
    checkpoint: str | None = None

    @property
    def last(self) -> TrainEvent:
        return self.events[-1]


# -- models and checkpoints ---------------------------------------------------------------
def build_model(config: TrainConfig, ndim: int = 3) -> torch.nn.Module:
    """The untrained network ``config`` describes (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    _factory, kwargs = config.factory(ndim)
    if config.planar:
        return planar(**kwargs)
    return ARCHITECTURES[config.arch](**kwargs)


def saved_factory(config: TrainConfig, ndim: int) -> tuple[str, dict]:
    """The factory and arguments that rebuild the trained (deployable) network of ``config``."""
    factory, kwargs = config.factory(ndim)
    if kwargs.get("norm") == "batch":
        kwargs["norm"] = None  # saved with its batch norms folded into the convolutions
    return factory, kwargs


def save_checkpoint(model: torch.nn.Module | dict, path: str | Path, factory: str, factory_kwargs: dict,
                    extra: dict | None = None) -> Path:
    """Write ``model``'s weights (or a state dict) and its recipe to the one file ``path``.

    The recipe is the factory and its arguments plus ``extra`` (the window, axes, class
    names, normalisation and training configuration); see
    :mod:`napari_qlty.models.checkpoints`. Written under a temporary name and renamed, so
    a reader never sees half a checkpoint. Returns ``path``.
    """
    state = model if isinstance(model, dict) else model.state_dict()
    return write_checkpoint(state, path, {"factory": factory, "factory_kwargs": factory_kwargs, **(extra or {})})


def checkpoint_spec(path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` that reloads the checkpoint at ``path`` anywhere (the CLI, a
    dask worker): its recipe is read from the file, and its factory must be trusted."""
    if checkpoint_recipe(path) is None:
        raise ValueError(f"{path} is not a napari-qlty checkpoint")
    return ModelSpec(str(path))


def load_checkpoint(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The trained network of a checkpoint, in eval mode (through :func:`models.load_model`)."""
    return load_model(checkpoint_spec(path), device)


# -- training -----------------------------------------------------------------------------
def _sampler(config: TrainConfig, pairs, *, augment: bool, seed: int):
    if config.planar:
        return PlanarSampler(pairs, config.patch, config.context, axes=config.train_axes, augment=augment,
                             intensity=config.intensity, balance=config.balance, seed=seed)
    return VolumeSampler(pairs, config.patch, augment=augment, intensity=config.intensity,
                         balance=config.balance, seed=seed)


def head_of(model: torch.nn.Module) -> torch.nn.Module:
    """The last 1x1 convolution (the class logits) of a UNet, MSDNet or Planar model."""
    net = model.net if hasattr(model, "net") else model
    head = getattr(net, "head", None)
    if head is None or getattr(head, "bias", None) is None:
        raise ValueError(f"{type(net).__name__} has no 'head' convolution with a bias to calibrate")
    return head


def deployable(model: torch.nn.Module, log_weight: torch.Tensor | None, *, copy: bool = True) -> torch.nn.Module:
    """The model as it is saved and returned: batch norms folded into their convolutions
    and, when ``log_weight`` is given, ``log_weight`` subtracted from the head's bias
    (logit adjustment). Works on a copy unless ``copy=False``."""
    out = deepcopy(model) if copy else model
    was_training = out.training
    out.eval()
    fold_batchnorm(out)
    if log_weight is not None:
        with torch.no_grad():
            bias = head_of(out).bias
            bias.sub_(log_weight.to(bias))
    out.train(was_training)
    return out


def stop_requested(stop) -> bool:
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


def _net(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """What a training batch goes through: the inner 2D network of a Planar model."""
    return model.net if config.planar else model


@torch.no_grad()
def evaluate(net: torch.nn.Module, batches, classes: int, weight: torch.Tensor | None,
             ignore_index: int, device) -> tuple[float, float, list[float]]:
    """(loss, macro F1, per-class F1) of ``net`` on labelled voxels of ``batches``."""
    was_training = net.training
    net.eval()
    total, count = 0.0, 0
    confusion = np.zeros((classes, classes), dtype=np.int64)
    try:
        for b in batches:
            b = b.to(device)
            if b.x.ndim == 4:
                b = Batch(b.x.contiguous(memory_format=torch.channels_last), b.y)
            logits = net(b.x)
            n = int((b.y != ignore_index).sum())
            if n:
                total += float(masked_cross_entropy(logits, b.y, ignore_index=ignore_index, weight=weight)) * n
                count += n
            confusion += confusion_matrix(b.y.cpu(), logits.argmax(1).cpu(), classes, ignore_label=ignore_index)
    finally:
        net.train(was_training)
    scores = f1_scores(confusion)
    present = scores[~np.isnan(scores)]
    return (total / count if count else math.nan,
            float(present.mean()) if present.size else math.nan,
            [float(s) for s in scores])


def iter_train(
    config: TrainConfig,
    train_data,
    val_data=None,
    *,
    model: torch.nn.Module | None = None,
    checkpoint: str | Path | None = None,
    stop: Callable[[], bool] | threading.Event | None = None,
    intensity: Fitted | None = None,
    class_names: Sequence[str] | None = None,
) -> Iterator[TrainEvent]:
    """Train on ``train_data`` (PairsDataset, TrainingPairs, (images, labels) or pairs).

    ``intensity`` maps the images as the model will see them (default: the one the data
    carries, e.g. an export's, else none); the trained model carries its recipe and
    applies it by itself at inference. ``class_names`` go into the checkpoint. Training
    on fewer than two labelled classes is refused: nothing could be learnt.

    Yields a "start" event, a "step" event every ``config.log_every`` steps, an "epoch"
    event after each epoch (with validation loss and macro F1 when ``val_data`` is given,
    and the checkpoint written), and "done" (or "stopped" if ``stop`` fired or
    ``max_seconds`` ran out). ``checkpoint``: where to write the state dict (the JSON
    recipe goes beside it); it is rewritten after every epoch and at the end.
    The trained model is ``model`` (trained in place) or, when None, the one built from
    ``config``; :func:`train` returns it.
    """
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        return (yield from _iter_train(config, train_data, val_data, model=model, checkpoint=checkpoint, stop=stop,
                                       intensity=intensity, class_names=class_names))
    finally:
        torch.set_num_threads(previous)


def _iter_train(config, train_data, val_data, *, model, checkpoint, stop, intensity, class_names):
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    train_pairs = as_pairs(train_data, intensity=intensity)
    intensity = train_pairs.intensity
    ignore = train_pairs.ignore_label
    ndim = train_pairs.labels.ndim - 1
    sampler = _sampler(config, train_pairs, augment=config.augment, seed=config.seed)
    val_batches, val_pairs = [], None
    if val_data is not None and len(val_data):
        val_pairs = as_pairs(val_data, intensity=intensity)
    if val_pairs is not None and len(val_pairs):
        val_sampler = _sampler(config, val_pairs, augment=False, seed=config.seed + 1)
        val_batches = val_sampler.fixed_batches(config.val_samples, config.batch_size, seed=config.seed + 1)
    if model is None:
        model = build_model(config, ndim)
    model.to(device)
    net = _net(model, config)
    counts = sampler.class_counts(config.classes)
    present = [int(c) for c in np.nonzero(counts)[0]]
    if len(present) < 2:
        names = list(class_names) if class_names is not None else []
        if not present:
            which = "no class"
        elif present[0] < len(names):
            which = f"only {names[present[0]]!r}"
        else:
            which = f"only class {present[0]}"
        raise ValueError(
            f"the labels hold {which}: training needs labels of at least two classes "
            "(for example background and the object to find)"
        )
    weight = None
    if config.class_weight_power is not None:
        weight = class_weights(counts, config.class_weight_power).to(device)
    log_weight = None
    if weight is not None and config.calibrate:
        # classes without labels have weight 0: leave their bias alone
        log_weight = torch.where(weight > 0, torch.log(weight.clamp_min(1e-12)), torch.zeros_like(weight))
        head_of(model)  # fail now, not after training, if there is nothing to calibrate
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.steps
    factory, kwargs = saved_factory(config, ndim)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    recipe = {"window": list(train_pairs.labels.shape[1:]), "normalisation": intensity.normalisation.to_json(),
              "classes": list(class_names) if class_names is not None else None}
    weights_text = "none" if weight is None else "[" + ", ".join(f"{w:.2f}" for w in weight.tolist()) + "]"
    yield TrainEvent("start", 0, total_steps, 0, config.epochs, time.perf_counter() - t0,
                     message=f"{len(train_pairs)} training pairs, {len(val_pairs) if val_pairs is not None else 0} "
                             f"validation; labelled voxels per class {counts.tolist()}, class weights {weights_text}")
    net.train()
    step, losses_step, losses_epoch = 0, [], []
    kind = "done"
    history: dict = {}
    for epoch in range(1, config.epochs + 1):
        for _ in range(config.steps_per_epoch):
            if stop_requested(stop):
                kind = "stopped"
                break
            if config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds:
                kind = "stopped"
                break
            batch = sampler.batch(config.batch_size).to(device)
            if config.planar:
                batch = Batch(batch.x.contiguous(memory_format=torch.channels_last), batch.y)
            for group in optimiser.param_groups:
                group["lr"] = config.learning_rate(step, time.perf_counter() - t0)
            loss = masked_cross_entropy(net(batch.x), batch.y, ignore_index=ignore, weight=weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            value = float(loss.detach())
            losses_step.append(value)
            losses_epoch.append(value)
            if step % config.log_every == 0:
                yield TrainEvent("step", step, total_steps, epoch, config.epochs, time.perf_counter() - t0,
                                 loss=float(np.mean(losses_step)), lr=optimiser.param_groups[0]["lr"])
                losses_step = []
        if kind == "stopped" and not losses_epoch:
            break
        val_loss = val_f1 = None
        per_class = None
        if val_batches:
            val_loss, val_f1, per_class = evaluate(net, val_batches, config.classes, weight, ignore, device)
            history = {"val_loss": val_loss, "val_f1": val_f1}
        written = None
        if ckpt_path is not None:
            written = str(save_checkpoint(deployable(model, log_weight), ckpt_path, factory, kwargs, {
                **recipe, "config": config.to_json(), "epoch": epoch, "step": step, **history}))
        yield TrainEvent("epoch", step, total_steps, epoch, config.epochs, time.perf_counter() - t0,
                         loss=float(np.mean(losses_epoch)) if losses_epoch else None,
                         lr=optimiser.param_groups[0]["lr"], val_loss=val_loss, val_f1=val_f1,
                         val_f1_per_class=tuple(per_class) if per_class else None, checkpoint=written)
        losses_epoch = []
        if kind == "stopped":
            break
    deployable(model, log_weight, copy=False).eval()
    describe(model, recipe)  # the model applies its normalisation by itself from now on
    message = "" if kind == "done" else (
        "time limit reached" if config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds
        else "stopped")
    yield TrainEvent(kind, step, total_steps, epoch, config.epochs, time.perf_counter() - t0,
                     checkpoint=str(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None,
                     message=message)


def train(config: TrainConfig, train_data, val_data=None, *, model: torch.nn.Module | None = None,
          checkpoint: str | Path | None = None, stop=None,
          on_event: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Run :func:`iter_train` to the end; returns the trained model (eval mode) and the events."""
    pairs = as_pairs(train_data)
    if model is None:
        model = build_model(config, pairs.labels.ndim - 1)
    events = []
    for event in iter_train(config, pairs, val_data, model=model, checkpoint=checkpoint, stop=stop):
        events.append(event)
        if on_event is not None:
            on_event(event)
    return TrainResult(model=model.eval(), config=config, events=events,
                       checkpoint=events[-1].checkpoint if events else None)
