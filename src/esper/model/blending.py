"""The learned gate of the ``gated`` blend algorithm.

Linear and sigmoid ramps are scalars (`esper.lifecycle.alpha_for_step`). The gated
blend adds a small per-sample (CNN) or per-token (transformer) gate ``g(h)`` in (0, 1)
and uses ``alpha(h) = p * (g + p * (1 - g))`` where ``p`` is the ramp's progress. That
is 0 at ``p = 0`` and exactly 1 at ``p = 1``, so the step into PROBATIONARY
(alpha pinned to 1) is continuous, while mid-ramp the gate decides, per input, how much
of the seed to let in. Its parameters belong to the seed: the seed's optimizer trains
them, and they count toward the seed's parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from esper.contracts import Topology

__all__ = ["GATE_INIT_BIAS", "GatedBlend"]

GATE_INIT_BIAS = 3.0
"""Initial gate logit: sigmoid(3) ~ 0.95, so a fresh gate follows the ramp closely."""


class GatedBlend(nn.Module):
    """Per-sample (CNN) or per-token (transformer) gate ``sigmoid(MLP(features))``."""

    def __init__(self, channels: int, topology: Topology) -> None:
        super().__init__()
        hidden = max(1, channels // 4)
        self.topology = topology
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.constant_(self.fc2.bias, GATE_INIT_BIAS)

    def gate(self, h: Tensor) -> Tensor:
        """g(h), shaped to broadcast against ``h``: [B,1,1,1] for CNN, [B,T,1] otherwise."""
        if self.topology is Topology.CNN:
            features = h.mean(dim=(2, 3))  # [B, C]
            return torch.sigmoid(self.fc2(torch.relu(self.fc1(features))))[:, :, None, None]
        # Per token, never pooled over time: pooling would leak future tokens.
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(h))))  # [B, T, 1]

    def alpha(self, h: Tensor, progress: float | Tensor) -> Tensor:
        g = self.gate(h)
        return progress * (g + progress * (1.0 - g))
