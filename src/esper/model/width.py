"""Width growth: new units in a host's layer, grown as a seed and merged in when kept.

A `WidthPoint` names, inside a host, a *producer* (a ``Conv2d`` or ``Linear`` whose
output units can grow), the per-unit *norm* after it (a ``BatchNorm2d``, or none), and
its *consumers* (the layers that read those units), each with the parameter-free *path*
between the norm and the consumer (ReLU, pooling, a global mean). A `WidthSeed` of ``k``
units owns their fan-in (``k`` new producer outputs), their norm and their fan-out (``k``
new inputs of each consumer). It runs beside the host through forward hooks: the
producer's input is kept, and each consumer's output gets the new units' contribution,
``fan_out(path(norm(fan_in(x))))``, added as the seed's stage says:

* TRAINING: the consumer's output is bit for bit the host's (the units' contribution is
  passed straight through for the gradient, from the producer's input detached: the
  host's gradients are those of a model without the seed);
* BLENDING: ``alpha x`` the contribution (the fan-out is scaled: scaling the fan-in
  would be undone by the norm);
* PROBATIONARY: the whole contribution;
* FOSSILIZED: `merge` makes producer, norm and consumers wider layers holding the new
  weights, and from then on the host is a plain, wider network.

The host's own computation is never touched while the seed is live, so a host output
is exactly the unseeded one whatever the seed holds, even NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from esper.lifecycle import ACTIVE_STAGES, SeedStage
from esper.model.blueprints import INIT_SCALE
from esper.model.incubation import incubate

__all__ = [
    "Consumer",
    "GlobalMean",
    "ParameterSwap",
    "WidthPoint",
    "WidthSeed",
    "adapt_neighbours",
    "merge",
    "point_units",
    "resize_to",
]

Layer = nn.Conv2d | nn.Linear
_ACTIVE = frozenset(int(s) for s in ACTIVE_STAGES)
_TRAINING, _BLENDING = int(SeedStage.TRAINING), int(SeedStage.BLENDING)


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a width point's units, and the parameter-free ops between the
    norm (or the producer, without a norm) and its input, applied to new units alike."""

    name: str
    path: Callable[[], nn.Module]
    """Builds those ops afresh for a seed (e.g. ReLU then a 2x2 max pool)."""


@dataclass(frozen=True)
class WidthPoint:
    """Where a host can grow wider: module names inside the host."""

    slot_id: str
    producer: str
    norm: str | None
    consumers: tuple[Consumer, ...]
    segment: int
    """The first host segment that runs a consumer (the segment count: the head), where a
    counterfactual without the seed starts again."""

    @property
    def consumers_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.consumers)


@dataclass(frozen=True)
class ParameterSwap:
    """A host parameter replaced by a wider one at a merge: ``new`` is ``old`` and the
    seed's ``parts`` concatenated along ``dim`` (what the optimizer state follows)."""

    old: Tensor
    new: Tensor
    parts: tuple[Tensor, ...]
    """What was joined in: the merged seed's parameters (their optimizer state comes
    along), or zeros (new units of a neighbouring seed: no state yet)."""
    dim: int


def _layer(host: nn.Module, name: str) -> Layer:
    module = host.get_submodule(name)
    if not isinstance(module, nn.Conv2d | nn.Linear):
        kind = type(module).__name__
        raise TypeError(f"width point layer {name!r} is a {kind}, not a Conv2d or Linear")
    return module


def _fan_in(producer: Layer, units: int) -> Layer:
    """``units`` new outputs of ``producer``: a layer of its kind, fresh weights."""
    if isinstance(producer, nn.Conv2d):
        return nn.Conv2d(
            producer.in_channels,
            units,
            producer.kernel_size,  # type: ignore[arg-type]
            stride=producer.stride,  # type: ignore[arg-type]
            padding=producer.padding,  # type: ignore[arg-type]
            bias=producer.bias is not None,
        )
    return nn.Linear(producer.in_features, units, bias=producer.bias is not None)


def _fan_out(consumer: Layer, units: int) -> Layer:
    """``units`` new inputs of ``consumer`` (no bias: the consumer keeps its own), started
    small (`INIT_SCALE`) so a fresh seed barely moves the consumer's output."""
    layer: Layer
    if isinstance(consumer, nn.Conv2d):
        layer = nn.Conv2d(
            units,
            consumer.out_channels,
            consumer.kernel_size,  # type: ignore[arg-type]
            stride=consumer.stride,  # type: ignore[arg-type]
            padding=consumer.padding,  # type: ignore[arg-type]
            bias=False,
        )
    else:
        layer = nn.Linear(units, consumer.out_features, bias=False)
    with torch.no_grad():
        layer.weight.mul_(INIT_SCALE)
    return layer


def _norm(norm: nn.Module | None, units: int) -> nn.Module:
    if norm is None:
        return nn.Identity()
    if not isinstance(norm, nn.BatchNorm2d | nn.BatchNorm1d):
        raise TypeError(f"a width point's norm must normalise each unit alone, not {norm}")
    return type(norm)(units, eps=norm.eps, momentum=norm.momentum, affine=norm.affine)


class WidthSeed(nn.Module):
    """``units`` new units at a `WidthPoint` of ``host``; see the module docstring.

    ``control`` is what the seed reads of its slot when the hooks run: an object with
    ``_forward_stage`` (int), ``alpha_override`` (float or None), ``_ramp`` (the
    blending alpha, a 0-d tensor) and ``lifecycle.incubation_radius``. It is held in a
    list, not as a module attribute, so the slot is not made a child of its own seed.
    """

    def __init__(self, host: nn.Module, point: WidthPoint, units: int, control: Any) -> None:
        super().__init__()
        if units < 1:
            raise ValueError(f"a width seed adds at least one unit, got {units}")
        self.point = point
        self.units = units
        producer = _layer(host, point.producer)
        self.fan_in = _fan_in(producer, units)
        self.norm = _norm(None if point.norm is None else host.get_submodule(point.norm), units)
        self.paths = nn.ModuleList(c.path() for c in point.consumers)
        self.fan_out = nn.ModuleList(_fan_out(_layer(host, c.name), units) for c in point.consumers)
        self._control = [control]
        self._input: Tensor | None = None
        self._handles: list[RemovableHandle] = []

    # ------------------------------------------------------------ hooks

    def attach(self, host: nn.Module) -> None:
        """Start running beside ``host`` (forward hooks on its producer and consumers)."""
        self.detach()
        producer = host.get_submodule(self.point.producer)
        self._handles.append(producer.register_forward_pre_hook(self._keep_input))
        for index, consumer in enumerate(self.point.consumers):
            hook = _ConsumerHook(self, index)
            self._handles.append(host.get_submodule(consumer.name).register_forward_hook(hook))

    def detach(self) -> None:
        """Stop running beside the host (at a cull or a merge)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _keep_input(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._input = args[0]

    def __getstate__(self) -> dict[str, Any]:
        # The kept input may be part of an autograd graph, which neither a copy (FLOP
        # counting copies the model) nor a pickle can take; it is the next forward's.
        state = self.__dict__.copy()
        state["_input"] = None
        return state

    def contribution(self, x: Tensor, index: int) -> Tensor:
        """What the new units add to consumer ``index``'s output for producer input ``x``."""
        units = self.norm(self.fan_in(x))
        out: Tensor = self.fan_out[index](self.paths[index](units))
        return out

    def combine(self, index: int, output: Tensor) -> Tensor:
        """Consumer ``index``'s output with the seed's contribution, as its stage says."""
        control = self._control[0]
        stage, override = control._forward_stage, control.alpha_override
        if stage not in _ACTIVE or self._input is None:
            return output
        if stage == _TRAINING:
            change = self.contribution(self._input.detach(), index)
            radius = control.lifecycle.incubation_radius
            return incubate(output, output.detach() + change, radius)
        if override is not None:
            if override == 0.0:
                return output
            alpha: float | Tensor = float(override)
        else:
            alpha = control._ramp if stage == _BLENDING else 1.0
        return output + alpha * self.contribution(self._input, index)


class _ConsumerHook:
    """The forward hook of one consumer: adds its seed's contribution."""

    def __init__(self, seed: WidthSeed, index: int) -> None:
        self.seed, self.index = seed, index

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return self.seed.combine(self.index, output)


class GlobalMean(nn.Module):
    """``[B, C, H, W] -> [B, C]``: the mean over positions a CNN head takes."""

    def forward(self, x: Tensor) -> Tensor:
        pooled: Tensor = x.mean(dim=(2, 3))
        return pooled


# ---------------------------------------------------------------- merging


def merge(host: nn.Module, seed: WidthSeed) -> list[ParameterSwap]:
    """Make ``seed``'s units part of ``host`` at alpha 1: its producer, norm and consumers
    become wider layers holding the seed's weights (the seed stops running beside it).
    Returns every host parameter replaced, for the optimizer state to follow."""
    seed.detach()
    point, swaps = seed.point, []
    producer = _layer(host, point.producer)
    swaps.append(_widen(producer, "weight", seed.fan_in.weight, 0))
    if producer.bias is not None and isinstance(seed.fan_in.bias, nn.Parameter):
        swaps.append(_widen(producer, "bias", seed.fan_in.bias, 0))
    if point.norm is not None:
        swaps += _widen_norm(host.get_submodule(point.norm), seed.norm)
    for index, consumer in enumerate(point.consumers):
        layer = _layer(host, consumer.name)
        fan_out = seed.fan_out[index]
        assert isinstance(fan_out, nn.Conv2d | nn.Linear)
        swaps.append(_widen(layer, "weight", fan_out.weight, 1))
        _sync_shape(layer)
    _sync_shape(producer)
    return swaps


def adapt_neighbours(
    host: nn.Module, point: WidthPoint, units: int, seeds: Sequence[WidthSeed]
) -> list[ParameterSwap]:
    """After ``units`` were merged at ``point``, fit the other live width ``seeds`` to the
    wider layers they share with it: a seed whose producer is one of ``point``'s
    consumers reads ``units`` more inputs (new fan-in columns), and one whose consumer is
    ``point``'s producer writes ``units`` more outputs (new fan-out rows); both start at
    zero, so no output changes. Returns the seeds' replaced parameters."""
    swaps = []
    for seed in seeds:
        if seed.point.producer in point.consumers_names:
            swaps.append(_pad(seed.fan_in, units, dim=1))
        for index, consumer in enumerate(seed.point.consumers):
            if consumer.name == point.producer:
                fan_out = seed.fan_out[index]
                assert isinstance(fan_out, nn.Conv2d | nn.Linear)
                swaps.append(_pad(fan_out, units, dim=0))
    return swaps


def _pad(layer: Layer, units: int, dim: int) -> ParameterSwap:
    """``layer``'s weight with ``units`` zero rows (dim 0) or columns (dim 1) added."""
    shape = list(layer.weight.shape)
    shape[dim] = units
    zeros = torch.zeros(shape, dtype=layer.weight.dtype, device=layer.weight.device)
    swap = _widen(layer, "weight", zeros, dim)
    _sync_shape(layer)
    return swap


def _widen(module: nn.Module, name: str, part: Tensor, dim: int) -> ParameterSwap:
    """Replace ``module.<name>`` by itself and ``part`` concatenated along ``dim``."""
    old = getattr(module, name)
    assert isinstance(old, nn.Parameter)
    joined = torch.cat([old.detach(), part.detach().to(old.dtype)], dim=dim)
    if old.dim() == 4 and old.is_contiguous(memory_format=torch.channels_last):
        joined = joined.contiguous(memory_format=torch.channels_last)
    new = nn.Parameter(joined, requires_grad=old.requires_grad)
    setattr(module, name, new)  # the same key: the parameter keeps its place in the order
    return ParameterSwap(old, new, (part,), dim)


def _widen_norm(norm: nn.Module, part: nn.Module) -> list[ParameterSwap]:
    swaps = []
    if getattr(norm, "affine", False):
        for name in ("weight", "bias"):
            swaps.append(_widen(norm, name, getattr(part, name), 0))
    for name in ("running_mean", "running_var"):
        old, extra = getattr(norm, name, None), getattr(part, name, None)
        if isinstance(old, Tensor) and isinstance(extra, Tensor):
            setattr(norm, name, torch.cat([old, extra.to(old.dtype)]))
    _sync_shape(norm)
    return swaps


def _sync_shape(module: nn.Module) -> None:
    """Set a layer's size attributes from its tensors (after they were replaced)."""
    if isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        stats = module.running_mean if module.running_mean is not None else module.weight
        module.num_features = stats.shape[0]


def resize_to(host: nn.Module, state: Mapping[str, Tensor], prefix: str = "") -> None:
    """Give every parameter and buffer of ``host`` the shape ``state`` holds for it, so
    that a state saved after a merge (wider layers) or before one (narrower: a
    rollback) loads. The values are left for the load to fill in."""
    for name, module in host.named_modules():
        changed = False
        for kind in ("_parameters", "_buffers"):
            tensors: dict[str, Any] = getattr(module, kind)
            for key, value in tensors.items():
                saved = state.get(f"{prefix}{name}.{key}" if name else f"{prefix}{key}")
                if value is None or saved is None or saved.shape == value.shape:
                    continue
                fresh = torch.empty(saved.shape, dtype=value.dtype, device=value.device)
                if isinstance(value, nn.Parameter):
                    fresh = nn.Parameter(fresh, requires_grad=value.requires_grad)
                tensors[key] = fresh
                changed = True
        if changed:
            _sync_shape(module)


def point_units(host: nn.Module, point: WidthPoint) -> int:
    """The producer's output units now (what a width blueprint's fraction is of)."""
    producer = _layer(host, point.producer)
    return producer.out_channels if isinstance(producer, nn.Conv2d) else producer.out_features
