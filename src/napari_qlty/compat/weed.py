"""qlty's clean-up of sparse training pairs: drop windows with no label outside the band."""

from __future__ import annotations

import torch

from .quilts import as_tensor, observed


# -- weeding ------------------------------------------------------------------------------
def _weed(tensor_in, tensor_out, missing_label, border_tensor, ndim: int):
    out = as_tensor(tensor_out, "tensor_out")
    border = torch.as_tensor(as_tensor(border_tensor, "border_tensor"), device=out.device)
    try:
        if border.ndim < ndim or border.ndim > out.ndim:
            raise RuntimeError
        torch.broadcast_shapes(tuple(border.shape), tuple(out.shape))
    except RuntimeError:
        raise ValueError(
            f"border_tensor {tuple(border.shape)} does not fit tensor_out {tuple(out.shape)}: "
            f"give the quilt's border_tensor() ({ndim} spatial axes)"
        ) from None
    if len(tensor_in) != out.shape[0]:
        raise ValueError(
            f"tensor_in has {len(tensor_in)} patches but tensor_out has {out.shape[0]}"
        )
    counted = observed(out, missing_label) & (border != 0)
    removal = ~counted.reshape(out.shape[0], -1).any(dim=1)
    keep = ~removal
    if isinstance(tensor_in, torch.Tensor):
        valid_in = tensor_in[keep.to(tensor_in.device)]
    else:
        valid_in = tensor_in[keep.cpu().numpy()]
    if isinstance(tensor_out, torch.Tensor):
        valid_out = tensor_out[keep]
    else:
        valid_out = tensor_out[keep.cpu().numpy()]
    return valid_in, valid_out, removal


def weed_sparse_classification_training_pairs_2D(
    tensor_in, tensor_out, missing_label, border_tensor
):
    """Drop 2D patch pairs with no label outside the border band.

    ``tensor_out`` is (M, Y, X) or (M, C, Y, X); ``border_tensor`` a quilt's
    ``border_tensor()``. Returns ``(valid_in, valid_out, removal_mask)`` with
    ``removal_mask`` (M,) bool, True for removed pairs.
    """
    return _weed(tensor_in, tensor_out, missing_label, border_tensor, 2)


def weed_sparse_classification_training_pairs_3D(
    tensor_in, tensor_out, missing_label, border_tensor
):
    """Drop 3D patch pairs with no label outside the border band (see the 2D function)."""
    return _weed(tensor_in, tensor_out, missing_label, border_tensor, 3)
