"""A categorical distribution over the legal entries of a boolean mask.

Illegal logits are replaced by `MASKED_LOGIT`, a large finite negative number, not -inf:
their probability underflows to exactly 0 while every intermediate stays finite, so the
entropy's ``p * log p`` never meets ``0 * inf = NaN`` and gradients stay finite. The
entropy sums over legal entries only, so a head with a single legal choice has entropy 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MASKED_LOGIT", "MaskedCategorical"]

MASKED_LOGIT = -1e8
"""Logit given to illegal entries: exp(-1e8 - max) is exactly 0 in float32 and float64."""


class MaskedCategorical:
    """Categorical over the last dimension of ``logits`` restricted to ``mask``.

    Args:
        logits: unnormalised log-probabilities, ``[*, K]``.
        mask: boolean ``[*, K]``, True where the entry is legal; None means all legal.
            Every row must have at least one legal entry (checked unless ``validate`` is
            False, because a row without one is a bug in whoever built the mask).
        validate: check the mask rows (one host sync on an accelerator).
    """

    def __init__(self, logits: Tensor, mask: Tensor | None = None, validate: bool = True) -> None:
        if mask is None:
            mask = torch.ones_like(logits, dtype=torch.bool)
        if mask.shape != logits.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != logits {tuple(logits.shape)}")
        if validate and not bool(mask.any(dim=-1).all()):
            raise ValueError("a mask row has no legal entry")
        self.mask = mask
        masked = torch.where(mask, logits, torch.full_like(logits, MASKED_LOGIT))
        self.log_probs = masked.log_softmax(dim=-1)  # [*, K]; exactly -inf never occurs

    @property
    def probs(self) -> Tensor:
        """Probabilities ``[*, K]``; exactly 0 on illegal entries."""
        return self.log_probs.exp()

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-probability of ``action`` (int64 ``[*]``), shape ``[*]``."""
        return self.log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        """Entropy over the legal entries, ``[*]``; 0 when only one entry is legal."""
        p_log_p = self.probs * self.log_probs
        return -torch.where(self.mask, p_log_p, torch.zeros_like(p_log_p)).sum(dim=-1)

    def mode(self) -> Tensor:
        """Most probable legal entry, int64 ``[*]``."""
        return self.log_probs.argmax(dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One draw per row, int64 ``[*]``; illegal entries have probability exactly 0."""
        flat = self.probs.reshape(-1, self.probs.shape[-1])
        drawn = torch.multinomial(flat, 1, generator=generator)
        return drawn.reshape(self.probs.shape[:-1])
