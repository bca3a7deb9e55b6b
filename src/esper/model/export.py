"""A grown network as a plain PyTorch model: one file of widths and weights.

`export_network` turns a `MorphogeneticModel` into plain data: the host's name and
constructor arguments, its weights (wider layers where width seeds were merged), and
for each slot whose seed counts in the output its blueprint, its blend and its weights.
A live width seed is merged in at its alpha, a seed in TRAINING (whose value is not in
the output) is left out. The file loads with ``torch.load(weights_only=True)``, and
`load_model` builds from it a `GrownNetwork`: the host and the kept seeds, with none of
the lifecycle machinery (no slots, stages, gates or hooks), whose outputs are the grown
model's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from esper.model.blending import GatedBlend
from esper.model.blueprints import get_blueprint
from esper.model.hosts import Host, build_host
from esper.model.morphogenetic import MorphogeneticModel
from esper.model.slot import SeedSlot
from esper.model.width import WidthSeed, merge, resize_to

__all__ = ["FORMAT", "ExportError", "GrownNetwork", "export_network", "load_model"]

FORMAT = "esper-network"
VERSION = 1


class ExportError(ValueError):
    """A file that is not an exported network, or not one this Esper reads."""


def export_network(
    model: MorphogeneticModel, host: str, host_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """``model``'s network as plain data (tensors on the CPU): see the module docstring.

    Args:
        host: the registered host's name (`esper.model.HOSTS`) ``model`` was built on.
        host_kwargs: the arguments it was built with (JSON-like values).
    """
    network = copy.deepcopy(model).cpu()
    slots = {}
    for slot in network.slots():
        if isinstance(slot.seed, WidthSeed):
            _merge_at_alpha(network, slot)
        elif slot.seed is not None and slot.forward_mode in ("blending", "full"):
            slots[slot.slot_id] = _slot_entry(slot)
    return {
        "format": FORMAT,
        "version": VERSION,
        "host": host,
        "host_kwargs": dict(host_kwargs),
        "topology": network.host.topology.value,
        "host_state": {k: v.detach().clone() for k, v in network.host.state_dict().items()},
        "slots": slots,
    }


def _merge_at_alpha(network: MorphogeneticModel, slot: SeedSlot) -> None:
    """A live width seed's units, merged into the host with its fan-out scaled by its
    alpha (none in TRAINING: its value is not in the output)."""
    seed = slot.seed
    assert isinstance(seed, WidthSeed)
    alpha = slot.alpha if slot.forward_mode != "incubating" else 0.0
    if alpha > 0.0:
        with torch.no_grad():
            for fan_out in seed.fan_out:
                fan_out.weight.mul_(alpha)  # type: ignore[operator]
        merge(network.host, seed)
    seed.detach()
    slot.seed = None


def _slot_entry(slot: SeedSlot) -> dict[str, Any]:
    assert slot.seed is not None and slot.state.blueprint_id is not None
    gated = slot.gate is not None and slot.forward_mode == "blending"
    return {
        "blueprint": slot.state.blueprint_id,
        "alpha": slot.alpha,
        "channels": slot.channels,
        "seed_state": {k: v.detach().clone() for k, v in slot.seed.state_dict().items()},
        "gate_state": None if not gated or slot.gate is None else slot.gate.state_dict(),
    }


class _Seed(nn.Module):
    """A kept depth seed: ``h + alpha (s - h)``, ``s`` itself at alpha 1; a gated blend's
    alpha is per sample (or token), from its gate."""

    def __init__(self, seed: nn.Module, alpha: float, gate: GatedBlend | None) -> None:
        super().__init__()
        self.seed, self.alpha, self.gate = seed, alpha, gate

    def forward(self, h: Tensor) -> Tensor:
        s: Tensor = self.seed(h)
        if self.alpha == 1.0:
            return s
        alpha: float | Tensor = self.alpha if self.gate is None else self.gate.alpha(h, self.alpha)
        return h + alpha * (s - h)


class GrownNetwork(nn.Module):
    """A host and the seeds kept at its injection points, as a plain module."""

    def __init__(self, host: Host, seeds: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.host = host
        self.seeds = nn.ModuleDict(dict(seeds))
        self._points = [p.slot_id for p in host.injection_points()]

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for index, slot_id in enumerate(self._points):
            h = self.host.forward_segment(index, h)
            if slot_id in self.seeds:
                h = self.seeds[slot_id](h)
        out: Tensor = self.host.forward_head(h)
        return out


def load_model(path: str | Path) -> GrownNetwork:
    """The network in an `export_network` file (``esper export`` writes one), built as a
    plain module; `ExportError` in one line for anything else."""
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated file, not a file at all
        raise ExportError(
            f"{path} is not a network 'esper export' wrote ({type(error).__name__})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExportError(f"{path} is not a network 'esper export' wrote")
    if data.get("version") != VERSION:
        raise ExportError(
            f"{path} is format version {data.get('version')}; this Esper reads {VERSION}"
        )
    host = build_host(str(data["host"]), **data["host_kwargs"])
    resize_to(host, data["host_state"])
    host.load_state_dict(data["host_state"])
    seeds = {sid: _build_seed(host, entry) for sid, entry in data["slots"].items()}
    return GrownNetwork(host, seeds).eval()


def _build_seed(host: Host, entry: Mapping[str, Any]) -> nn.Module:
    spec = get_blueprint(host.topology, str(entry["blueprint"]))
    seed = spec.build(int(entry["channels"]))
    seed.load_state_dict(entry["seed_state"])
    gate = None
    if entry["gate_state"] is not None:
        gate = GatedBlend(int(entry["channels"]), host.topology)
        gate.load_state_dict(entry["gate_state"])
    return _Seed(seed, float(entry["alpha"]), gate)
