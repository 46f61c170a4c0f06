"""Every bar's latent means and piano features, what the MLP stages read, in bounded memory.

One row per bar: [latent means of the five instruments (5 * K) | piano features (24)] float32.
Rows stay on the training device when they fit in `in_memory_bytes` (the MMA and human corpora:
gathers on a GPU are free); a bigger corpus writes them once to a scratch .npy in the temp folder,
unlinked as soon as it is mapped (nothing is left behind, even by a killed run), and each batch
gathers its rows through the map, whose pages are handed back like the bar shards'.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from models.networks import N_FEATURES
from training.shards import MappedArray, PageReleaser

IN_MEMORY_BYTES = 64 << 20  # 160,000 bars at K = 16


class LatentStore:
    """Append rows in bar order, `finish()`, then `take(index)` rows of any bars."""

    def __init__(self, n_bars: int, n_instruments: int, latent: int, device: torch.device,
                 in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        self.n, self.shape, self.device = n_bars, (n_instruments, latent), device
        self.width = n_instruments * latent + N_FEATURES
        self.on_disk = n_bars * self.width * 4 > in_memory_bytes
        self._sum = torch.zeros(n_instruments, latent, dtype=torch.float64, device=device)
        self._filled = 0
        self._rows: torch.Tensor | MappedArray | None = None
        self._releaser = PageReleaser()
        if self.on_disk:
            fd, self._path = tempfile.mkstemp(prefix="vaejam-latents-", suffix=".npy")
            self._file = os.fdopen(fd, "wb")
            np.lib.format.write_array_header_1_0(
                self._file, {"descr": "<f4", "fortran_order": False, "shape": (n_bars, self.width)})
        else:  # one block filled in place: a list of chunks joined at the end fragments the heap
            self._rows = torch.empty(n_bars, self.width, device=device)

    def append(self, latents: torch.Tensor, features: torch.Tensor) -> None:
        """latents (B, 5, K), features (B, N_FEATURES) of the next B bars."""
        rows = torch.cat([latents.flatten(1), features], dim=1).float()
        self._sum += latents.double().sum(0)
        if self.on_disk:
            self._file.write(rows.cpu().numpy().tobytes())
        else:
            self._rows[self._filled : self._filled + len(rows)] = rows
        self._filled += len(rows)

    def finish(self) -> "LatentStore":
        if self._filled != self.n:
            raise ValueError(f"latent store: {self._filled} rows written for {self.n} bars")
        if self.on_disk:
            self._file.close()
            self._rows = MappedArray(self._path)
            try:
                os.unlink(self._path)  # the map keeps the data; a killed run leaves no file
            except OSError:  # Windows: an open file cannot be removed; the temp folder keeps it
                pass
        return self

    @property
    def mean(self) -> torch.Tensor:
        """(5, K) mean latent over every bar: the "mean latent" baseline and initial latents."""
        return (self._sum / max(1, self.n)).float()

    def take(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of bars `index` (1-D): latents (U, 5, K) and features (U, 24) on the device."""
        if isinstance(self._rows, MappedArray):
            rows = torch.from_numpy(self._rows.array[index]).to(self.device)
            self._releaser.read(self._rows, len(index))
        else:
            assert self._rows is not None, "finish() the store first"
            rows = self._rows[torch.from_numpy(np.ascontiguousarray(index)).to(self.device)]
        k = self.shape[0] * self.shape[1]
        return rows[:, :k].reshape(len(rows), *self.shape), rows[:, k:]
