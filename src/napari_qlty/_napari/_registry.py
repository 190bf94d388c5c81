"""Models living in this napari session, offered by the inference widget.

A widget that trains or loads a model calls :func:`register_model` and the inference
widget lists it next to "model file" (a model object runs as it is, on the device it is
on; the inference widget moves an ``nn.Module`` to the chosen device)::

    from napari_qlty._napari import register_model
    register_model("my U-Net (epoch 40)", net)
"""

from __future__ import annotations

from collections.abc import Callable

from psygnal import Signal


class _Registry:
    changed = Signal()

    def __init__(self) -> None:
        self.models: dict[str, Callable] = {}


REGISTRY = _Registry()


def register_model(name: str, model: Callable) -> None:
    """Offer ``model`` (an ``nn.Module`` or any callable (B, C, *w) -> (B, K, *w)) as ``name``.

    Registering a name again replaces the model.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a model name must be a non-empty string, got {name!r}")
    if not callable(model):
        raise TypeError(f"a model must be callable (an nn.Module or a function), got {type(model).__name__}")
    REGISTRY.models[name.strip()] = model
    REGISTRY.changed.emit()


def unregister_model(name: str) -> None:
    """Forget the model registered as ``name`` (no error if there is none)."""
    if REGISTRY.models.pop(name, None) is not None:
        REGISTRY.changed.emit()


def registered_models() -> dict[str, Callable]:
    """{name: model} of the models registered in this session."""
    return dict(REGISTRY.models)
