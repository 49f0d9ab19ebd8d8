"""A tuned lens (an option of the dump, `dump.tuned_lens`: how many training sentences to fit it on).

The logit lens reads layer l as if the layers above it did nothing; a lower layer's states need not live in
the basis the head reads, so its reading understates what the layer holds (Belrose et al. 2023). A tuned
lens first maps layer l's state by an affine "translator" towards the last layer's: here, per layer, the
least-squares affine map from h_l to h_L over the tokens of `dump.tuned_lens` training sentences
(`<paths.data>/train.src`, a seeded subset), solved in closed form with a ridge of `_RIDGE` times the mean
variance (Din et al. 2023 fit these maps the same way; Belrose et al. train theirs on the KL to the last
layer's distribution by gradient descent, which is not what this does). The tuned reading of layer l is
head(norm(A_l h_l + b_l)), that of layer L the logit lens's. The probe sentences are never fitted on.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.dump.readout import Lens

_RIDGE = 1e-4
FIT_SOURCE = "train.src"  # the training sentences (source side) in <paths.data>, never the probe's


class Translators:
    """Sums for the least-squares maps from each layer l < L to layer L, filled batch by batch."""

    def __init__(self, n_layers: int, d_model: int) -> None:
        self.n_layers, self.d = n_layers, d_model
        self.xtx = torch.zeros(n_layers, d_model + 1, d_model + 1, dtype=torch.float64)
        self.xty = torch.zeros(n_layers, d_model + 1, d_model, dtype=torch.float64)
        self.n = 0

    def add(self, states, batch: np.ndarray, positions: np.ndarray) -> None:
        """Add the tokens at (batch[i], positions[i]) of `states` (layers 0..L, each (B, T, d))."""
        b, t = torch.as_tensor(batch), torch.as_tensor(positions)
        y = states[self.n_layers][b, t].detach().to("cpu", torch.float64)
        ones = torch.ones(len(b), 1, dtype=torch.float64)
        for layer in range(self.n_layers):
            x = torch.cat([states[layer][b, t].detach().to("cpu", torch.float64), ones], dim=1)
            self.xtx[layer] += x.T @ x
            self.xty[layer] += x.T @ y
        self.n += len(b)

    def solve(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(W (d, d), b (d,)) of each layer l < L: h_L ~ h_l W + b."""
        if self.n <= self.d + 1:
            raise ValueError(f"a tuned lens of width {self.d} needs more than {self.d + 1} training tokens, got {self.n}")
        maps = []
        for layer in range(self.n_layers):
            a = self.xtx[layer].clone()
            ridge = _RIDGE * float(torch.diagonal(a)[:-1].mean())
            a[:-1, :-1] += ridge * torch.eye(self.d, dtype=torch.float64)
            solution = torch.linalg.solve(a, self.xty[layer])
            maps.append((solution[:-1].float(), solution[-1].float()))
        return maps


def tuned(lens: Lens, maps: list[tuple[torch.Tensor, torch.Tensor]], n_layers: int, device) -> Lens:
    """The tuned lens: layer l < L translated by its map, then read as the last layer is."""
    maps = [(w.to(device), b.to(device)) for w, b in maps]

    def read(layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer == n_layers:
            return lens(layer, h)
        w, b = maps[layer]
        return lens(n_layers, (h.float() @ w + b).to(h.dtype))
    return read


def fit_lines(n: int, lines: list[str], seed: int) -> list[str]:
    """A seeded subset of `n` of the training lines (all when fewer), in their order."""
    if n >= len(lines):
        return list(lines)
    rows = np.sort(np.random.default_rng(seed).choice(len(lines), size=n, replace=False))
    return [lines[i] for i in rows]
