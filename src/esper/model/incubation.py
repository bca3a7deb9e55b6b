"""The incubation forward: a seed in TRAINING learns, the host never sees it.

Shared by depth seeds (`esper.model.slot`) and width seeds (`esper.model.width`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["incubate"]


class _StraightThrough(torch.autograd.Function):
    """Forward: ``h`` bit for bit. Backward: the incoming gradient to both inputs."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, s: Tensor) -> Tensor:
        return h.clone()  # exactly h, whatever s holds (even NaN or inf)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, grad


def incubate(h: Tensor, s: Tensor, radius: float) -> Tensor:
    """The TRAINING forward: value ``h`` bit for bit, host gradients as without the seed.

    The seed output ``s`` (computed from ``h.detach()``) receives the incoming gradient
    as if fully blended, but through its change ``s - h`` capped at ``radius`` times the
    features' norm (per batch): past the cap the gradient only turns the change, it
    cannot grow it. ``radius`` 0 is the plain straight-through estimator.
    """
    if radius > 0.0:
        base = h.detach()
        change = s - base
        cap = (radius * base.norm() / change.norm().clamp_min(1e-12)).clamp(max=1.0)
        s = base + change * cap
    out: Tensor = _StraightThrough.apply(h, s)  # type: ignore[no-untyped-call]
    return out
