"""GPTQ rounding: each weight column rounded in turn, its error pushed onto the columns not yet rounded.

Round-to-nearest treats every weight alone.  GPTQ (Frantar et al., 2023) rounds
the columns of a linear layer's ``[out, in]`` weight one at a time and moves each
column's rounding error onto the remaining columns, weighted by how the layer's
inputs correlate, so that the layer's *output* on real inputs changes as little
as possible.  Those correlations are the Hessian ``H = sum x x^T`` of the
layer's inputs over calibration data (:mod:`.hessians`); with its inverse's
upper Cholesky factor ``U`` the update for column ``j`` is
``W[:, j:] -= (w_j - q_j) / U[j, j] * U[j, j:]``.

The grid is the backend's own (:mod:`.grid`): each group's ``(low, scale)`` is
chosen when its first column is reached, from the weights as updated so far, so
the result is a set of levels on float16 ranges that the GGUF writer stores
exactly.  Columns are processed in blocks of whole groups, the updates beyond
a block applied once per block (the "lazy batch" form), which keeps the work
in matrix products.

The rounding depends only on the layer's float weight, its Hessian, the width
and the grid, so a search computes it once per (layer, width) and reuses it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from haq_plugin.adapters.groupwise.grid import GroupGrid, float_grid_params, mse_clip_ratios

ROUNDINGS = ("nearest", "gptq")
DAMPING = 0.01  # of the mean diagonal, added to H: what keeps it invertible with few calibration tokens
BLOCK_COLUMNS = 128
log = logging.getLogger("haq_plugin.adapters.groupwise")


@dataclass(frozen=True)
class GroupLevels:
    """A matrix on a group grid: each weight's level, and each group's float16 ``low`` and ``scale``.

    ``levels`` is ``[out, n_groups, group]`` (uint8), ``low`` and ``scale`` are
    ``[out, n_groups, 1]``; a weight's value is ``low + level * scale``.
    """

    levels: torch.Tensor
    low: torch.Tensor
    scale: torch.Tensor

    def values(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The weights these levels stand for, in ``shape``."""
        return (self.levels.to(self.low.dtype) * self.scale + self.low).reshape(shape)


def inverse_factor(hessian: torch.Tensor) -> torch.Tensor:
    """``U`` with ``U^T U = (H + damping)^-1``, what GPTQ needs of ``H``; the damping grows tenfold until
    ``H`` factorises.  It depends on ``H`` alone: compute it once per Hessian, not per width."""
    with _one_thread():
        return _factorised(hessian)


def _factorised(hessian: torch.Tensor) -> torch.Tensor:
    h = hessian.to(torch.float64).clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0  # an input that never fired: its column is rounded alone
    mean = h.diagonal().mean().item()
    for attempt in range(4):
        damped = h + torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (DAMPING * 10 ** attempt * mean)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info.item() == 0:
            inverse = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
    raise ValueError("the input Hessian is not positive definite even with 10% damping")


def _group_range(columns: torch.Tensor, bits: int, grid: GroupGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, scale)``, each ``[out, 1]``, of one group's current weights ``[out, group]``."""
    groups = columns.unsqueeze(1)
    ratio = mse_clip_ratios(groups, bits) if grid.weight_range == "mse" else 1.0
    low, scale = float_grid_params(groups, bits, ratio)
    return low[:, 0], scale[:, 0]


def gptq_levels(weight: torch.Tensor, upper: torch.Tensor, bits: int, grid: GroupGrid) -> GroupLevels:
    """``weight`` (``[out, in]``) rounded at ``bits`` on ``grid`` (float zero point) by GPTQ.

    ``upper`` is :func:`inverse_factor` of the layer's input Hessian.
    """
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float32).clone()
    out_features, in_features = w.shape
    size = in_features if grid.group_size == 0 else grid.group_size
    levels = torch.empty(out_features, in_features, dtype=torch.uint8, device=w.device)
    lows = torch.empty(out_features, in_features // size, 1, device=w.device)
    scales = torch.empty_like(lows)
    block = size * max(1, BLOCK_COLUMNS // size)
    with _one_thread():
        _round_columns(w, upper, bits, grid, size, block, (levels, lows, scales))
    return GroupLevels(levels.reshape(out_features, -1, size), lows, scales)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """GPTQ's operations are small or sequential: on a busy 2-core CPU a second thread, waited for at each
    one's barrier, made a 576 x 1536 layer's column loop take 16 s instead of 0.6 s, and the factor of a
    1536 x 1536 Hessian 23 s instead of 1.2 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _round_columns(w: torch.Tensor, upper: torch.Tensor, bits: int, grid: GroupGrid, size: int, block: int,
                   into: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """GPTQ's loop over ``w``'s columns, block by block, writing levels and ranges into ``into``."""
    levels, lows, scales = into
    top = 2 ** bits - 1
    in_features = w.shape[1]
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        part, factor = w[:, start:end].clone(), upper[start:end, start:end]
        errors = torch.empty_like(part)
        for j in range(end - start):
            column = start + j
            if column % size == 0:
                low, scale = _group_range(part[:, j:j + size], bits, grid)
                lows[:, column // size], scales[:, column // size] = low, scale
            code = torch.clamp(torch.round((part[:, j:j + 1] - low) / scale), 0, top)
            levels[:, column] = code[:, 0].to(torch.uint8)
            error = (part[:, j:j + 1] - (code * scale + low)) / factor[j, j]
            part[:, j:] -= error * factor[j, j:]
            errors[:, j:j + 1] = error
        w[:, end:] -= errors @ upper[start:end, end:]
