"""Small fully convolutional networks that suit sparse labels, in 2D or 3D.

Both keep the spatial size of their input for any size (odd ones included), so they go
through the stitcher (:func:`napari_qlty.infer`, :func:`napari_qlty.predict.predict`)
like any model, and both are built from plain keyword arguments so a state dict plus a
factory reloads them::

    from napari_qlty.models import ModelSpec, load_model
    spec = ModelSpec("unet.pt", factory="napari_qlty.train.networks:unet",
                     factory_kwargs={"dims": 3, "channels": 8})
    model = load_model(spec)

Neither network uses a normalisation that looks at the whole window (instance or group
norm): its output would then depend on what else is in the window, and windows cut
from a volume would disagree where they overlap (a seam). Batch norm is available; in
eval mode it is a fixed affine map, so it keeps outputs translation-equivariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDNet", "UNet", "msdnet", "unet", "FACTORIES"]


def _conv(dims: int):
    if dims == 2:
        return nn.Conv2d
    if dims == 3:
        return nn.Conv3d
    raise ValueError(f"dims must be 2 or 3, got {dims!r}")


def _norm(dims: int, norm: str | None, channels: int) -> nn.Module:
    if norm is None or norm == "none":
        return nn.Identity()
    if norm == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    raise ValueError(f"norm must be None, 'none' or 'batch', got {norm!r}")


class _Block(nn.Sequential):
    """Two 3x3(x3) convolutions with padding 1, each followed by (norm and) a ReLU."""

    def __init__(self, dims: int, c_in: int, c_out: int, norm: str | None) -> None:
        conv = _conv(dims)
        super().__init__(
            conv(c_in, c_out, 3, padding=1), _norm(dims, norm, c_out), nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1), _norm(dims, norm, c_out), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """A small U-Net: ``levels`` poolings, ``channels`` features at full resolution.

    Pooling uses ``ceil_mode`` and the decoder upsamples to the exact size of the skip
    connection, so any input size works and the output has the input's spatial size.
    The receptive field of the default (2 levels) is 45 voxels per axis.
    """

    def __init__(
        self,
        dims: int = 3,
        in_channels: int = 1,
        classes: int = 2,
        channels: int = 8,
        levels: int = 2,
        growth: int = 2,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        conv = _conv(dims)
        self.dims = dims
        widths = [channels * growth**i for i in range(levels + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(_Block(dims, c, w, norm))
            c = w
        self.up = nn.ModuleList()
        for w_skip in reversed(widths[:-1]):
            self.up.append(_Block(dims, c + w_skip, w_skip, norm))
            c = w_skip
        self.head = conv(c, classes, 1)
        self._pool = F.max_pool2d if dims == 2 else F.max_pool3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self._pool(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class MSDNet(nn.Module):
    """A mixed-scale dense network (Pelt & Sethian 2018).

    ``layers`` dilated 3x3(x3) convolutions of ``width`` features each; layer ``i`` sees
    the input and every earlier layer, with dilation ``1 + i % max_dilation``; a 1x1
    convolution of all of them gives the classes. Few parameters, a large receptive
    field (``1 + 2 * sum of dilations`` voxels), and no pooling, so nothing to align.
    """

    def __init__(
        self,
        dims: int = 3,
        in_channels: int = 1,
        classes: int = 2,
        layers: int = 20,
        width: int = 1,
        max_dilation: int = 10,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if layers < 1 or width < 1 or max_dilation < 1:
            raise ValueError("layers, width and max_dilation must be >= 1")
        conv = _conv(dims)
        self.dims = dims
        self.in_channels = in_channels
        self.width = width
        self.dilations = [1 + i % max_dilation for i in range(layers)]
        self.convs = nn.ModuleList(
            conv(in_channels + i * width, width, 3, padding=d, dilation=d)
            for i, d in enumerate(self.dilations)
        )
        self.norms = nn.ModuleList(_norm(dims, norm, width) for _ in self.dilations)
        self.head = conv(in_channels + layers * width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            # autograd keeps each layer's input: grow by concatenation
            features = x
            for conv, norm in zip(self.convs, self.norms):
                features = torch.cat([features, F.relu(norm(conv(features)))], dim=1)
            return self.head(features)
        # inference: every layer writes into one buffer, no concatenation copies
        c0, w = self.in_channels, self.width
        features = x.new_empty((x.shape[0], c0 + len(self.convs) * w, *x.shape[2:]))
        features[:, :c0] = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            c = c0 + i * w
            features[:, c : c + w] = F.relu(norm(conv(features[:, :c])))
        return self.head(features)


def unet(**kwargs) -> UNet:
    """Factory for :class:`ModelSpec` (``napari_qlty.train.networks:unet``)."""
    return UNet(**kwargs)


def msdnet(**kwargs) -> MSDNet:
    """Factory for :class:`ModelSpec` (``napari_qlty.train.networks:msdnet``)."""
    return MSDNet(**kwargs)


#: architecture name -> factory path, as written into checkpoint configs
FACTORIES = {
    "unet": "napari_qlty.train.networks:unet",
    "msdnet": "napari_qlty.train.networks:msdnet",
}
