"""Optimizer ownership: one host optimizer, one optimizer per live seed.

`OptimizerSet.sync(model)` reconciles the optimizers with the model after any lifecycle
event (germinate, cull, auto-cull, fossilize, rollback):

* a newly germinated seed gets its own optimizer; no other optimizer is touched, so no
  other seed loses its momentum;
* a culled seed's optimizer is dropped at once: nothing can step a parameter that is
  no longer in the model;
* a fossilized seed's parameters join the host optimizer as a new param group and take
  their optimizer state (momentum) with them;
* a kept width seed is merged into the host's layers (`merge`): each widened host
  parameter takes the place of the one it replaces, with the two optimizer states
  concatenated as the parameters were.

Invariant (`check_ownership`): every trainable parameter of the model is owned by
exactly one optimizer, and every parameter an optimizer owns is in the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from esper.config import OptimConfig
from esper.lifecycle import SeedStage
from esper.model.morphogenetic import MorphogeneticModel
from esper.model.width import ParameterSwap

__all__ = ["OptimizerSet", "OwnershipError", "lr_factor", "make_optimizer", "merged_state"]


class OwnershipError(AssertionError):
    """The optimizer-ownership invariant is broken; the message lists the parameters."""


def make_optimizer(
    config: OptimConfig, params: list[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """A fresh optimizer of ``config.kind`` over ``params``."""
    if config.kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _holds(optimizer: torch.optim.Optimizer, param: Tensor) -> bool:
    return any(p is param for group in optimizer.param_groups for p in group["params"])


def merged_state(
    optimizer: torch.optim.Optimizer,
    old: Mapping[str, Any],
    parts: Sequence[Mapping[str, Any]],
    swap: ParameterSwap,
) -> dict[str, Any]:
    """The optimizer state of ``swap.new``: each per-element tensor of ``old`` and of the
    seed's ``parts`` (zeros where one has none yet) concatenated along ``swap.dim``.

    Adam's step count is one number per parameter, the host's: the seed's moments are
    rescaled so that their bias-corrected values, what the next step uses, are the ones
    the seed had (`_rescaled`).
    """
    keys = {k for state in (old, *parts) for k, v in state.items() if isinstance(v, Tensor)}
    keys -= {"step"}
    pieces = [(old, swap.old), *zip(parts, swap.parts, strict=True)]
    merged: dict[str, Any] = {}
    for key in sorted(keys):
        tensors = [_per_element(state, key, param) for state, param in pieces]
        if "step" in old:
            tensors[1:] = [
                _rescaled(optimizer, key, t, state, old)
                for t, (state, _) in zip(tensors[1:], pieces[1:], strict=True)
            ]
        merged[key] = torch.cat(tensors, dim=swap.dim)
    if "step" in old:
        merged["step"] = old["step"].clone()
    return merged


def _per_element(state: Mapping[str, Any], key: str, param: Tensor) -> Tensor:
    value = state.get(key)
    if isinstance(value, Tensor) and value.shape == param.shape:
        return value
    return torch.zeros_like(param)


def _rescaled(
    optimizer: torch.optim.Optimizer,
    key: str,
    moment: Tensor,
    state: Mapping[str, Any],
    host: Mapping[str, Any],
) -> Tensor:
    """A seed's Adam moment rescaled to the host's step: ``m (1 - b^t_host) / (1 - b^t)``
    keeps ``m / (1 - b^t)``, its bias-corrected value, as the seed had it."""
    beta1, beta2 = optimizer.defaults.get("betas", (0.9, 0.999))
    beta = {"exp_avg": beta1, "exp_avg_sq": beta2}.get(key)
    step = float(state["step"]) if "step" in state else 0.0
    if beta is None or step == 0.0:
        return moment
    host_step = float(host["step"])
    scale: Tensor = moment * ((1.0 - beta**host_step) / (1.0 - beta**step))
    return scale


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rates in ``epoch`` (1-based) of ``epochs``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))
    return 1.0


class OptimizerSet:
    """The host optimizer plus one optimizer per live seed, kept in step with a model."""

    def __init__(self, model: MorphogeneticModel, config: OptimConfig) -> None:
        self.config = config
        self.host = make_optimizer(config, model.get_host_parameters(), config.host_lr)
        self.seeds: dict[str, torch.optim.Optimizer] = {}
        self.lr_scale = 1.0
        self.fossils: list[str] = []
        """Fossilized slots whose parameters joined the host optimizer, in join order."""
        self.sync(model)

    # ------------------------------------------------------------ lifecycle

    def sync(self, model: MorphogeneticModel) -> None:
        """Bring the optimizers in line with the model's slots (idempotent)."""
        for slot in model.slots():
            sid, stage = slot.slot_id, slot.stage
            if stage is SeedStage.FOSSILIZED and sid not in self.fossils:
                if slot.seed_parameters():  # a merged width seed has none: see merge()
                    self._join_host(sid, slot.seed_parameters())
            elif slot.state.live and not self._owns(sid, slot.seed_parameters()):
                # New seed (or its modules were rebuilt, e.g. by a checkpoint load).
                self.seeds[sid] = make_optimizer(
                    self.config, slot.seed_parameters(), self.config.seed_lr * self.lr_scale
                )
            elif not slot.state.live and sid in self.seeds:
                del self.seeds[sid]  # culled: its parameters left the model with it

    def _owns(self, slot_id: str, params: list[nn.Parameter]) -> bool:
        opt = self.seeds.get(slot_id)
        if opt is None:
            return False
        owned = {id(p) for group in opt.param_groups for p in group["params"]}
        return owned == {id(p) for p in params}

    def _join_host(self, slot_id: str, params: list[nn.Parameter]) -> None:
        seed_opt = self.seeds.pop(slot_id, None)
        self.host.add_param_group({"params": params, "lr": self.config.host_lr * self.lr_scale})
        if seed_opt is not None:
            for p in params:
                if p in seed_opt.state:
                    self.host.state[p] = seed_opt.state[p]
        self.fossils.append(slot_id)

    def merge(self, slot_id: str, swaps: Sequence[ParameterSwap]) -> None:
        """A width seed in ``slot_id`` was merged into the host: each widened parameter
        replaces the old one in the optimizer that owns it (the host's, or a neighbouring
        seed's whose layers grew with it), its state the old state and the seed's (or
        zeros) concatenated along the merge's dimension; the seed's optimizer goes."""
        seed_opt = self.seeds.pop(slot_id, None)
        seed_state = seed_opt.state if seed_opt is not None else {}
        for swap in swaps:  # a host parameter, or a neighbouring live seed's
            owner = next(o for o in (self.host, *self.seeds.values()) if _holds(o, swap.old))
            for group in owner.param_groups:
                group["params"] = [swap.new if p is swap.old else p for p in group["params"]]
            old = owner.state.pop(swap.old, {})
            parts = [seed_state.get(p, {}) for p in swap.parts]
            merged = merged_state(owner, old, parts, swap)
            if merged:
                owner.state[swap.new] = merged

    def set_lr_scale(self, scale: float) -> None:
        """Scale every group's learning rate to ``scale`` times its base rate."""
        self.lr_scale = scale
        for group in self.host.param_groups:
            group["lr"] = self.config.host_lr * scale
        for opt in self.seeds.values():
            for group in opt.param_groups:
                group["lr"] = self.config.seed_lr * scale

    # ------------------------------------------------------------ the batch loop's API

    def zero_grad(self) -> None:
        self.host.zero_grad(set_to_none=True)
        for opt in self.seeds.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.host.step()
        for opt in self.seeds.values():
            opt.step()

    def clip_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters clipped together: ``"host"`` (host and fossils), then each live seed."""
        host = [p for group in self.host.param_groups for p in group["params"]]
        groups = {"host": host}
        for sid, opt in self.seeds.items():
            groups[sid] = [p for group in opt.param_groups for p in group["params"]]
        return groups

    # ------------------------------------------------------------ invariant

    def check_ownership(self, model: MorphogeneticModel) -> None:
        """Raise `OwnershipError` unless each trainable parameter has exactly one owner."""
        owners: dict[int, list[str]] = {}
        for name, params in self.clip_groups().items():
            for p in params:
                owners.setdefault(id(p), []).append(name)
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        problems = [
            f"{n}: owned by {owners.get(i, [])}"
            for i, n in names.items()
            if len(owners.get(i, [])) != 1
        ]
        problems += [
            f"parameter owned by {o} is not in the model"
            for i, o in owners.items()
            if i not in names
        ]
        if problems:
            raise OwnershipError("optimizer ownership broken: " + "; ".join(problems))

    # ------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "host": self.host.state_dict(),
            "fossils": list(self.fossils),
            "seeds": {sid: opt.state_dict() for sid, opt in self.seeds.items()},
        }

    @classmethod
    def restore(
        cls, model: MorphogeneticModel, config: OptimConfig, state: dict[str, Any]
    ) -> OptimizerSet:
        """Rebuild the optimizers for ``model`` (already loaded) and load their state.

        The host's param groups are rebuilt in the saved fossil order, so PyTorch's
        index-based optimizer state lines up with the same parameters.
        """
        new = cls.__new__(cls)
        new.config = config
        new.host = make_optimizer(config, model.get_host_parameters(), config.host_lr)
        new.seeds, new.fossils, new.lr_scale = {}, [], 1.0
        for sid in state["fossils"]:
            new.host.add_param_group(
                {"params": model.slot(sid).seed_parameters(), "lr": config.host_lr}
            )
            new.fossils.append(sid)
        new.host.load_state_dict(state["host"])
        for sid, opt_state in state["seeds"].items():
            opt = make_optimizer(config, model.slot(sid).seed_parameters(), config.seed_lr)
            opt.load_state_dict(opt_state)
            new.seeds[sid] = opt
        new.sync(model)
        return new
