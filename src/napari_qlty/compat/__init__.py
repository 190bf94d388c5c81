"""Drop-in replacements for qlty 1.5.0's quilts, backed by the napari-qlty engine.

A qlty user switches by changing one import::

    # from qlty import NCZYXQuilt, LargeNCZYXQuilt
    from napari_qlty.compat import NCZYXQuilt, LargeNCZYXQuilt

Constructor parameters (names, order, defaults), the attributes users touch (``window``,
``step``, ``border``, ``border_weight``, ``nZ``/``nY``/``nX``, ``weight``, ``N_chunks``,
...), method names and return conventions are qlty's; patches come out in qlty's order
(image ``n``, then z, y, x) at qlty's origins ``min(i * step, size - window)``.

What differs on purpose (qlty's defects, fixed):

* the in-memory 3D quilt steps the last window back, as every other quilt does
  (qlty's ``NCZYXQuilt`` cuts short windows and fails when ``(Z - window) % step != 0``);
* an axis smaller than its window raises a ``ValueError`` naming the parameter
  (qlty produces negative origins and silently wrong patches);
* window faces that lie on the volume's edge keep full weight when stitching (qlty
  down-weights them although no other window can take over there) and the normaliser is
  the engine's exact one, never ``norma + eps``: with ``border_weight=0`` (which, as in
  qlty, means 1e-8) voxels covered only by border bands get the exact mean of those
  predictions, not ``k / (k + 1)`` of it;
* the Large quilts accumulate in RAM, or in chunk-aligned zarr arrays through a
  bounded block cache (see :class:`_SumStore`), ``return_mean`` can be called any number
  of times, works on zarr 3 and renormalises over the channel axis (qlty's 2D
  ``normalize`` summed over the image axis);
* stitching runs in torch on the patches' device (no numba).

Labels keep qlty's convention: ``border_tensor()`` is 0 in the band on *every* face, and
``unstitch_data_pair`` / ``unstitch_and_clean_sparse_data_pair`` / the ``weed_*``
functions use it, so training sets are the ones qlty makes.
"""

from __future__ import annotations

from .large import LargeNCYXQuilt, LargeNCZYXQuilt
from .quilts import NCYXQuilt, NCZYXQuilt
from .weed import (
    weed_sparse_classification_training_pairs_2D,
    weed_sparse_classification_training_pairs_3D,
)

__all__ = [
    "LargeNCYXQuilt",
    "LargeNCZYXQuilt",
    "NCYXQuilt",
    "NCZYXQuilt",
    "weed_sparse_classification_training_pairs_2D",
    "weed_sparse_classification_training_pairs_3D",
]
