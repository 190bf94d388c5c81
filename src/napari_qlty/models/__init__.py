"""Models by path: loading without unpickling code, choosing a device, sizing batches.

A :class:`ModelSpec` is a small picklable description of a model file, so any process
(a dask worker, a CLI run resuming yesterday's job) can load the same model::

    spec = ModelSpec.parse("unet.pt")                        # TorchScript
    spec = ModelSpec.parse("unet.pt2")                       # torch.export program
    spec = ModelSpec.parse("weights.pt::my_pkg.nets:unet")   # state dict + factory
    model = load_model(spec, resolve_device("auto"))

Three file kinds are accepted, recognised from their zip contents rather than their
names:

* **TorchScript** (``torch.jit.script``/``trace`` + ``save``): a zip whose entries
  (under one root folder) include ``constants.pkl`` and ``code/``; loaded with
  ``torch.jit.load``.
* **torch.export program** (``torch.export.save``): a zip holding ``archive_format``
  (the text ``pt2``), ``models/<name>.json`` and ``data/weights/...``; loaded with
  ``torch.export.load(path).module()``.
* **state dict** (``torch.save(model.state_dict())``): a ``torch.save`` zip
  (``data.pkl``, no ``constants.pkl``) or the legacy non-zip format; read with
  ``torch.load(weights_only=True)`` and poured into the module built by the factory.

``torch.load`` is never called with ``weights_only=False``: a pickled model object
(``torch.save(model)``) is refused. torch.export's own loader is not hardened against
hostile files (it can unpickle payloads, ``eval`` symbolic-shape strings through
sympy, ``exec`` guard code and resolve graph targets to any ``torch.*`` callable), so
the archive is checked first (see :func:`check_exported_archive`) and guards are not
generated. TorchScript is a program, not data: PyTorch's security policy asks that it
be loaded only from trusted sources. Only a state dict plus an installed factory is
pure data.
"""

from __future__ import annotations

from .archive import check_exported_archive
from .batching import (
    auto_batch_size,
    forget_batch_size,
    remembered_batch_size,
    run_with_oom_backoff,
    window_cost,
)
from .devices import resolve_device
from .loading import clear_model_cache, load_model
from .probes import check_model_output
from .spec import PICKLED_MODEL_MESSAGE, ModelLoadError, ModelSpec, model_kind

__all__ = [
    "ModelLoadError",
    "ModelSpec",
    "PICKLED_MODEL_MESSAGE",
    "auto_batch_size",
    "check_exported_archive",
    "check_model_output",
    "clear_model_cache",
    "forget_batch_size",
    "load_model",
    "model_kind",
    "remembered_batch_size",
    "resolve_device",
    "run_with_oom_backoff",
    "window_cost",
]
