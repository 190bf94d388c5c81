"""Partial sums handed from one region to another: kept in a zarr group, or in memory.

A region's windows reach past its far faces; those sums wait here, under a key naming
sender and receiver, until the receiving region is finished. Both kinds keep the
sums' dtype (float32, or float64 for float64 work).
"""

from __future__ import annotations

import numpy as np
import torch
import zarr


class ZarrSpills:
    """Spills as one uncompressed zarr array each, in ``group`` (on disk: any process reads them)."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group

    def write(self, key: str, data: torch.Tensor, *, add: bool = False) -> None:
        data = data.detach()
        if add and key in self.group:
            data = data.cpu() + self.read(key).to(data.dtype)
        values = data.cpu().numpy()
        arr = self.group.create_array(
            key, shape=values.shape, chunks=values.shape, dtype=values.dtype,
            compressors=None, fill_value=0, overwrite=True,
        )
        arr[...] = values

    def read(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.group[key][...]))

    def __contains__(self, key: str) -> bool:
        return key in self.group

    def delete(self, key: str) -> None:
        if key in self.group:
            del self.group[key]


class MemorySpills:
    """Spills as tensors in a dict, on the device they were made on (nothing touches a disk)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def write(self, key: str, data: torch.Tensor, *, add: bool = False) -> None:
        data = data.detach()
        old = self.tensors.get(key) if add else None
        self.tensors[key] = data.clone() if old is None else old + data.to(old.device)

    def read(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def delete(self, key: str) -> None:
        self.tensors.pop(key, None)
