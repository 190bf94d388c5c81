"""Small fully convolutional networks that suit sparse labels, in 2D or 3D.

Both keep the spatial size of their input for any size (odd ones included), so they go
through the stitcher (:func:`napari_qlty.infer`, :func:`napari_qlty.run`)
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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FACTORIES", "MSDNet", "Planar", "UNet", "fold_batchnorm", "msdnet", "planar", "reflect_index", "stack_slices", "unet"]


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
    The receptive field of the default (2 levels) is 41 voxels per axis.
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
        pool: str = "max",
    ) -> None:
        super().__init__()
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
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
        if pool == "max":
            self._pool = F.max_pool2d if dims == 2 else F.max_pool3d
        else:
            self._pool = F.avg_pool2d if dims == 2 else F.avg_pool3d

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
        shape = (x.shape[0], c0 + len(self.convs) * w, *x.shape[2:])
        if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
            features = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        else:
            features = x.new_empty(shape)
        features[:, :c0] = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            c = c0 + i * w
            features[:, c : c + w] = F.relu(norm(conv(features[:, :c])))
        return self.head(features)


class Planar(nn.Module):
    """A 2D network run slice by slice over 3D windows ("2.5D"), along one or more axes.

    Each slice is given with ``context`` neighbouring slices on either side as extra
    channels (reflected at the window's faces), so ``net`` takes
    ``in_channels * (2 * context + 1)`` channels. With several ``axes`` (0: slices
    normal to Z, i.e. XY planes; 1: XZ; 2: YZ) the class probabilities of every
    orientation are averaged; the output is their logarithm, so ``softmax`` of the
    output gives the averaged probabilities back and the module is a drop-in model for
    :func:`napari_qlty.infer` and :func:`napari_qlty.run`
    (``postprocess="softmax"``).

    Why: sparse labels are painted on slices, so a 2D network trained on the painted
    planes sees every labelled voxel with its whole in-plane context, at a fraction of
    the cost of a 3D network (which spends most of each 3D crop on unlabelled voxels).
    """

    def __init__(self, net: nn.Module, context: int = 2, axes: Sequence[int] = (0,),
                 in_channels: int = 1, slices_per_batch: int = 32) -> None:
        super().__init__()
        axes = tuple(int(a) for a in axes)
        if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"axes must be distinct values in (0, 1, 2), got {axes}")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.net = net
        self.context = int(context)
        self.axes = axes
        self.in_channels = int(in_channels)
        self.slices_per_batch = int(slices_per_batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:  # said in the image's terms: the widgets and the command line show it as is
            given = x.ndim - 2
            raise ValueError(
                f"the model takes 3D windows (z, y, x: it segments each slice with its neighbours), but the "
                f"windows are {given}D" + (": run each time point on its own" if given == 4 else
                                           ": choose a volume" if given == 2 else ""))
        if x.shape[1] != self.in_channels:  # else the convolution would count slices times channels
            n = self.in_channels  # worded as models.probes.expects_channels: this file ships alone
            raise ValueError(f"the model expects {n} channel{'s' if n != 1 else ''}, the image has {x.shape[1]}")
        k, several = self.context, len(self.axes) > 1
        total = None
        for axis in self.axes:
            d = 2 + axis
            n = x.shape[d]
            padded = x.index_select(d, reflect_index(torch.arange(-k, n + k, device=x.device), n)) if k else x
            outs = []
            for i0 in range(0, n, self.slices_per_batch):
                m = min(n, i0 + self.slices_per_batch) - i0
                stack = stack_slices(padded.narrow(d, i0, m + 2 * k), axis, k)
                # 2D convolutions on CPU run several times faster on channels-last inputs
                stack = stack.contiguous(memory_format=torch.channels_last)
                y = self.net(stack)  # (B * m, classes, h, w)
                y = y.reshape(x.shape[0], m, *y.shape[1:]).movedim(1, d)
                outs.append(torch.softmax(y, dim=1) if several else y)
            y = torch.cat(outs, dim=d) if len(outs) > 1 else outs[0]
            total = y if total is None else total + y
        if not several:
            return total
        return torch.log((total / len(self.axes)).clamp_min(1e-12))


def stack_slices(x: torch.Tensor, axis: int, context: int) -> torch.Tensor:
    """(B, C, Z, Y, X) whose ``axis`` holds ``m + 2 context`` slices -> (B * m, C * (2 context + 1), h, w).

    Output slice ``j`` holds input slices ``j .. j + 2 context`` (the middle one is the
    slice being segmented), channel-major: channel ``c * (2 context + 1) + t``.
    """
    d = 2 + axis
    w = x.unfold(d, 2 * context + 1, 1)  # (B, C, ..., m, ..., 2k+1)
    w = w.movedim(d, 1)  # (B, m, C, h, w, 2k+1)
    b, m, c, h, ww, t = w.shape
    return w.permute(0, 1, 2, 5, 3, 4).reshape(b * m, c * t, h, ww)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every batch norm of a UNet or MSDNet (inside ``model``) into the convolution
    before it, in place, and return ``model``.

    In eval mode a batch norm is a fixed affine map per channel, so the folded network
    gives the same outputs; it is the network its factory builds with ``norm=None``
    (same state-dict keys), runs faster, and carries no batch-norm buffers.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _Block):
                for i in (0, 3):
                    if isinstance(module[i + 1], nn.modules.batchnorm._BatchNorm):
                        _fold(module[i], module[i + 1])
                        module[i + 1] = nn.Identity()
            elif isinstance(module, MSDNet):
                for i, (conv, norm) in enumerate(zip(module.convs, module.norms)):
                    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                        _fold(conv, norm)
                        module.norms[i] = nn.Identity()
    return model


def _fold(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.ndim - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices folded into ``[0, n)`` by mirror reflection without repeating the edge."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def unet(**kwargs) -> UNet:
    """Factory for :class:`ModelSpec` (``napari_qlty.train.networks:unet``)."""
    return UNet(**kwargs)


def msdnet(**kwargs) -> MSDNet:
    """Factory for :class:`ModelSpec` (``napari_qlty.train.networks:msdnet``)."""
    return MSDNet(**kwargs)


def planar(arch: str = "unet", context: int = 2, axes: Sequence[int] = (0,), in_channels: int = 1,
           **kwargs) -> Planar:
    """Factory for a :class:`Planar` 2.5D model (``napari_qlty.train.networks:planar``).

    ``arch`` is ``"unet"`` or ``"msdnet"``; other keyword arguments go to that network,
    which is built 2D with ``in_channels * (2 * context + 1)`` input channels.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    kwargs.pop("dims", None)
    net = ARCHITECTURES[arch](dims=2, in_channels=in_channels * (2 * context + 1), **kwargs)
    return Planar(net, context=context, axes=axes, in_channels=in_channels)


ARCHITECTURES = {"unet": UNet, "msdnet": MSDNet}


#: architecture name -> factory path, as written into checkpoint configs
FACTORIES = {
    "unet": "napari_qlty.train.networks:unet",
    "msdnet": "napari_qlty.train.networks:msdnet",
    "planar": "napari_qlty.train.networks:planar",
}
