"""Blueprints: the modules a seed can be. Registered by topology and name.

A blueprint is one of two growth kinds (`GrowthKind`): a *depth* blueprint is a module
inserted at a slot, mapping the features there to the same shape; a *width* blueprint
adds units to the layer before the slot (`esper.model.width`: new output channels of
its producer, with their norm, read by its consumer), so it has no module of its own
shape and is built from the host's `WidthPoint` there.

Every blueprint is a residual module ``x + gamma * f(x)`` with a learnable per-channel
scale ``gamma`` that starts small (``INIT_SCALE``), so a fresh seed is close to the
identity yet every parameter receives gradient from the first batch (an exactly-zero
init would leave ``f``'s weights without gradient until ``gamma`` moved). Blueprints
contain no dropout and draw no random numbers in ``forward``, so a seed in TRAINING
leaves the host's random stream, and hence its output, untouched.

Shapes: CNN blueprints map ``[B, C, H, W]`` to the same; transformer blueprints map
``[B, T, C]`` to the same and are causal (position t sees only positions <= t).

To add one::

    @register_blueprint(Topology.CNN, "my_block", params=lambda c: ..., help="...")
    def _my_block(channels: int) -> nn.Module:
        return Residual(MyBranch(channels), channels, Topology.CNN)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.contracts import Topology
from esper.registry import Registry, UnknownNameError

__all__ = [
    "BLUEPRINTS",
    "INIT_SCALE",
    "BlueprintSpec",
    "GrowthKind",
    "Residual",
    "blueprint_names",
    "get_blueprint",
    "group_count",
    "register_blueprint",
    "register_width_blueprint",
]

INIT_SCALE = 1e-2
"""Initial value of every blueprint's output scale ``gamma``."""


class GrowthKind(StrEnum):
    """How a seed grows the host: a module at a slot, or units added to a layer."""

    DEPTH = "depth"
    WIDTH = "width"


def _no_module(channels: int) -> nn.Module:
    raise TypeError("a width blueprint has no module of its own: see esper.model.width")


@dataclass(frozen=True)
class BlueprintSpec:
    """A registered blueprint: how to build it and how many parameters it has.

    Depth blueprints have ``build`` and ``params``; width blueprints have ``units``."""

    topology: Topology
    name: str
    build: Callable[[int], nn.Module]
    """channels -> a fresh module (float32, CPU); depth blueprints only."""
    params: Callable[[int], int]
    """channels -> exact trainable parameter count (tested against the real module);
    for a width blueprint the count depends on the layers it widens (its seed says)."""
    help: str
    kind: GrowthKind = GrowthKind.DEPTH
    units: Callable[[int], int] | None = None
    """Width blueprints: the layer's units now -> the units the seed adds (at least 1)."""


BLUEPRINTS: Registry[BlueprintSpec] = Registry("blueprint")


def _key(topology: Topology, name: str) -> str:
    return f"{topology.value}:{name}"


def register_blueprint(
    topology: Topology, name: str, *, params: Callable[[int], int], help: str
) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Decorator registering ``build(channels) -> nn.Module`` as a blueprint."""

    def decorate(build: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        BLUEPRINTS.add(_key(topology, name), BlueprintSpec(topology, name, build, params, help))
        return build

    return decorate


def register_width_blueprint(topology: Topology, name: str, fraction: float, help: str) -> None:
    """Register a width blueprint adding ``fraction`` of a layer's units (rounded up)."""

    def units(current: int) -> int:
        return max(1, math.ceil(fraction * current))

    spec = BlueprintSpec(topology, name, _no_module, lambda c: 0, help, GrowthKind.WIDTH, units)
    BLUEPRINTS.add(_key(topology, name), spec)


def blueprint_names(topology: Topology, kind: GrowthKind | None = None) -> list[str]:
    """Names of the blueprints that fit ``topology`` (of growth ``kind``, or every kind),
    in registration order."""
    prefix = f"{topology.value}:"
    return [
        key[len(prefix) :]
        for key, spec in BLUEPRINTS.items()
        if key.startswith(prefix) and (kind is None or spec.kind is kind)
    ]


def get_blueprint(topology: Topology, name: str) -> BlueprintSpec:
    """The spec of ``name`` for ``topology``; the error lists the topology's blueprints."""
    key = _key(topology, name)
    if key not in BLUEPRINTS:
        raise UnknownNameError(f"{topology.value} blueprint", name, blueprint_names(topology))
    return BLUEPRINTS.get(key)


def group_count(channels: int) -> int:
    """GroupNorm groups: the most groups (up to 32) that leave >= 4 channels per group."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


class Residual(nn.Module):
    """``x + gamma * branch(x)`` with ``gamma`` per channel, initialised to INIT_SCALE."""

    def __init__(self, branch: nn.Module, channels: int, topology: Topology) -> None:
        super().__init__()
        self.branch = branch
        self.gamma = nn.Parameter(torch.full((channels,), INIT_SCALE))
        # CNN channels sit on dim 1, transformer channels on the last dim.
        self._shape = (1, channels, 1, 1) if topology is Topology.CNN else (1, 1, channels)

    def forward(self, x: Tensor) -> Tensor:
        branch: Tensor = self.branch(x)
        return x + self.gamma.view(self._shape) * branch


# ---------------------------------------------------------------- CNN branches


class _NormDelta(nn.Module):
    """norm(x) - x: blending it in moves activations toward their normalised form."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        normed: Tensor = self.norm(x)
        return normed - x


class _SqueezeExcite(nn.Module):
    """x * sigmoid(W2 relu(W1 mean_hw(x))): channel attention from global context."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 4)
        self.squeeze = nn.Linear(channels, hidden, bias=False)
        self.excite = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W]
        context = x.mean(dim=(2, 3))  # [B, C]
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(context))))
        return x * gate[:, :, None, None]


def _conv_norm_relu(channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.GroupNorm(group_count(channels), channels),
        nn.ReLU(),
    ]


def _bottleneck_width(channels: int) -> int:
    return max(4, channels // 4)


@register_blueprint(
    Topology.CNN, "conv_light", params=lambda c: 9 * c * c + 3 * c, help="one 3x3 conv block"
)
def _cnn_conv_light(c: int) -> nn.Module:
    return Residual(nn.Sequential(*_conv_norm_relu(c)), c, Topology.CNN)


@register_blueprint(
    Topology.CNN, "conv_heavy", params=lambda c: 18 * c * c + 5 * c, help="two 3x3 conv blocks"
)
def _cnn_conv_heavy(c: int) -> nn.Module:
    branch = nn.Sequential(*_conv_norm_relu(c), *_conv_norm_relu(c))
    return Residual(branch, c, Topology.CNN)


@register_blueprint(
    Topology.CNN,
    "attention",
    params=lambda c: 2 * c * max(1, c // 4) + 2 * c,
    help="squeeze-excite",
)
def _cnn_attention(c: int) -> nn.Module:
    return Residual(_SqueezeExcite(c), c, Topology.CNN)


@register_blueprint(
    Topology.CNN, "depthwise", params=lambda c: c * c + 12 * c, help="depthwise 3x3 + pointwise"
)
def _cnn_depthwise(c: int) -> nn.Module:
    branch = nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.GroupNorm(group_count(c), c),
        nn.ReLU(),
    )
    return Residual(branch, c, Topology.CNN)


@register_blueprint(
    Topology.CNN,
    "bottleneck",
    params=lambda c: 2 * c * _bottleneck_width(c) + 9 * _bottleneck_width(c) ** 2 + c,
    help="1x1 down, 3x3, 1x1 up",
)
def _cnn_bottleneck(c: int) -> nn.Module:
    b = _bottleneck_width(c)
    branch = nn.Sequential(
        nn.Conv2d(c, b, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(b, b, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(b, c, 1, bias=False),
    )
    return Residual(branch, c, Topology.CNN)


@register_blueprint(Topology.CNN, "norm", params=lambda c: 3 * c, help="GroupNorm pull")
def _cnn_norm(c: int) -> nn.Module:
    return Residual(_NormDelta(nn.GroupNorm(group_count(c), c)), c, Topology.CNN)


# ---------------------------------------------------------------- transformer branches


class _CausalSelfAttention(nn.Module):
    """Pre-norm causal self-attention with ``heads`` heads over the full width."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention seed: width {channels} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, C]
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, C/H]
        out: Tensor = self.out(y.transpose(1, 2).reshape(b, t, c))
        return out


def _attention_heads(c: int) -> int:
    return 2 if c % 2 == 0 else 1


def _lora_rank(c: int) -> int:
    return max(1, min(8, c // 4))


@register_blueprint(
    Topology.TRANSFORMER, "mlp", params=lambda c: 8 * c * c + 8 * c, help="pre-norm 4x MLP"
)
def _tf_mlp(c: int) -> nn.Module:
    branch = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
    return Residual(branch, c, Topology.TRANSFORMER)


@register_blueprint(
    Topology.TRANSFORMER,
    "attention",
    params=lambda c: 4 * c * c + 7 * c,
    help="extra causal self-attention",
)
def _tf_attention(c: int) -> nn.Module:
    return Residual(_CausalSelfAttention(c, _attention_heads(c)), c, Topology.TRANSFORMER)


@register_blueprint(
    Topology.TRANSFORMER,
    "lora",
    params=lambda c: 2 * c * _lora_rank(c) + c,
    help="low-rank linear update (rank 8)",
)
def _tf_lora(c: int) -> nn.Module:
    r = _lora_rank(c)
    branch = nn.Sequential(nn.Linear(c, r, bias=False), nn.Linear(r, c, bias=False))
    return Residual(branch, c, Topology.TRANSFORMER)


@register_blueprint(Topology.TRANSFORMER, "norm", params=lambda c: 3 * c, help="LayerNorm pull")
def _tf_norm(c: int) -> nn.Module:
    return Residual(_NormDelta(nn.LayerNorm(c)), c, Topology.TRANSFORMER)


# ---------------------------------------------------------------- width blueprints

for _topology in (Topology.CNN, Topology.TRANSFORMER):
    for _percent in (25, 50, 100):
        register_width_blueprint(
            _topology,
            f"width_{_percent}",
            _percent / 100,
            f"{_percent}% more units in the layer before the slot",
        )
