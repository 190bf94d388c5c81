"""The napari plugin: widgets, reader and writer over the napari-qlty engine.

Nothing here computes tiles, weights or statistics: the widgets collect parameters,
call the engine (:mod:`napari_qlty.core.grid`, :mod:`~napari_qlty.core.pairs`,
:mod:`~napari_qlty.io.pairs_store`, :mod:`~napari_qlty.run`) off the GUI thread, and show
the results as layers. Widgets are imported by napari on demand (see ``napari.yaml``).
"""

from ._registry import register_model, registered_models, unregister_model

__all__ = ["register_model", "registered_models", "unregister_model"]
