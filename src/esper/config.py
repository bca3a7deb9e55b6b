"""Configuration: nested frozen dataclasses with defaults and help on every field.

`from_dict` builds any config class from plain data (a parsed JSON file) and rejects
unknown keys with the list of valid ones; `to_dict` gives the resolved form that every
run saves next to its results. `merge` is the one way layers of plain data combine
(task defaults, then a policy's training environment, then a ``--config`` file, then
flags: `esper.training.tasks.run_config`), and `shortcuts` turns flat flag names
(``epochs``) into the nested layer they stand for (``episode.epochs``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import PurePath
from typing import Any, Literal, TypeVar

from esper.lifecycle import BlendAlgorithm, LifecycleConfig

__all__ = [
    "MAX_SEED",
    "SHORTCUTS",
    "ConfigError",
    "EpisodeConfig",
    "GovernorConfig",
    "GrowthStep",
    "HeuristicConfig",
    "OptimConfig",
    "RewardConfig",
    "RunConfig",
    "ScheduleConfig",
    "SignalConfig",
    "TrainingConfig",
    "from_dict",
    "merge",
    "observing_every_seed",
    "reject_non_finite",
    "shortcuts",
    "to_dict",
]


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class OptimConfig:
    """How host and seeds are optimised."""

    kind: Literal["sgd", "adamw"] = "sgd"
    """Optimizer family for host and seeds."""
    host_lr: float = 0.05
    """Learning rate of the host (and of fossilized seeds, which join it)."""
    seed_lr: float = 0.05
    """Learning rate of live seeds."""
    momentum: float = 0.9
    """SGD momentum (ignored by AdamW)."""
    weight_decay: float = 5e-4
    """Weight decay of every group."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule over the episode's epochs, applied to host and seeds alike:
    cosine decays from the base rate at epoch 1 towards 0 at the last epoch."""

    def __post_init__(self) -> None:
        # Non-finite values are the episode's to name (`reject_non_finite`), with the path.
        for name in ("host_lr", "seed_lr"):  # 0 is allowed: it freezes them
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.momentum < 1 or math.isnan(self.momentum)):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class TrainingConfig:
    """The batch loop's settings."""

    max_batches: int | None = None
    """Train on at most this many batches per epoch (None: the whole training set)."""
    max_val_batches: int | None = None
    """Validate on at most this many batches (None: the whole validation set)."""
    max_grad_norm: float = 1.0
    """Clip the host's and each seed's gradient norm to this, separately."""
    compile: bool = False
    """Compile the forward + loss with torch.compile (slower to start; see README)."""
    counterfactuals: Literal["judged", "live"] = "judged"
    """Whose paired counterfactual ("without this seed": a second pass from its slot on)
    is measured each epoch. 'judged': seeds on probation, whose fossilize or cull verdict
    reads it, and every kept seed on the last epoch. 'live': also every blending seed,
    every epoch; the learned controller always uses it (its observation carries them).
    The choice changes what is measured and its FLOPs, never a decision of the gates or
    the heuristic."""
    channels_last: bool = True
    """Keep a CNN host's weights and image batches in channels_last memory format: on
    CPU, pooling and convolutions run about 1.5x faster on the CIFAR host
    (benchmarks/results/epoch_profile-*); results differ from the default format only in
    float summation order."""

    def __post_init__(self) -> None:
        _at_least(self, "max_batches", 1)
        _at_least(self, "max_val_batches", 1)
        if self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be > 0")


@dataclass(frozen=True)
class SignalConfig:
    """Thresholds for plateau and host-stabilisation detection."""

    plateau_threshold: float = 0.5
    """An epoch whose validation accuracy rises by less than this (pp) extends a plateau."""
    stabilization_threshold: float = 0.03
    """An epoch is stable if it does not beat the best validation loss so far by more
    than this fraction..."""
    stabilization_epochs: int = 3
    """...and this many consecutive stable epochs latch ``host_stabilized`` for the run."""
    history: int = 5
    """Length of the loss and accuracy histories in the signals."""


@dataclass(frozen=True)
class GovernorConfig:
    """When the governor rolls a run back."""

    enabled: bool = True
    """Turn the watchdog off entirely (not recommended)."""
    loss_multiplier: float = 3.0
    """Fail when validation loss exceeds this many times the random-guess loss."""
    collapse_drop: float = 30.0
    """Fail when validation accuracy falls this many pp below the best so far."""
    max_consecutive_rollbacks: int = 3
    """Stop the run (non-zero exit) after this many rollbacks in a row: a fault that
    survives rolling back and culling every live seed is not transient."""

    def __post_init__(self) -> None:
        _at_least(self, "max_consecutive_rollbacks", 1)


@dataclass(frozen=True)
class RewardConfig:
    """The reward every run records, whatever its controller (`esper.training.reward`);
    the learned controller is trained on it."""

    accuracy_weight: float = 0.1
    """Reward per pp of final validation accuracy, paid on the last epoch."""
    compute_weight: float = 0.2
    """Charge per static run's worth of extra compute (training and evaluation FLOPs
    beyond what the static host spends), as it is spent. With accuracy_weight 0.1,
    doubling an episode's compute must buy 2 pp of final accuracy to pay for itself."""
    shaping_weight: float = 0.1
    """Potential-based shaping: Phi = shaping_weight x validation accuracy (pp), 0 at the
    end; every epoch pays gamma * Phi(now) - Phi(before), which sums to -Phi(start)."""
    gamma: float = 1.0
    """Discount of returns. PPO's advantage estimate reads this same field: shaping is
    only policy-invariant when both use one gamma. 1: an episode is a fixed number of
    epochs and only its end counts, and then the shaping sums to exactly -Phi(start)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


@dataclass(frozen=True)
class HeuristicConfig:
    """The rule-based controller's settings (see `esper.controller.heuristic`).

    When and how much to grow live here; when a seed is good or bad enough to keep or
    remove is the lifecycle's (`LifecycleConfig.fossilize_z`, ``cull_z``)."""

    start_epoch: int = 1
    """Germinate from this epoch on: early, while the learning rate is high."""
    min_epochs_left: int = 8
    """Never germinate when fewer epochs than this remain: with the default gates a seed
    needs 1 epoch of training, 5 of blending and 1 of probation before it can be kept."""
    max_growth_params: float | None = 4.0
    """Seeds (live and fossilized) may add at most this many times the host's parameters
    (None: no parameter budget)."""
    max_growth_flops: float | None = None
    """Seeds may add at most this many times the host's training FLOPs per sample
    (None: no compute budget)."""
    blueprints: tuple[str, ...] = ()
    """Blueprints the heuristic may grow (empty: every one registered for the host's
    topology); in a slot it grows the largest that fits the budget."""
    blend: BlendAlgorithm = BlendAlgorithm.LINEAR
    """Blend algorithm for every germination."""
    stalled_training_epochs: int = 8
    """Cull a seed still in TRAINING after this many epochs: gate G2 keeps finding its
    gradients too weak to blend it in, and it holds the slot."""
    cull_penalty: float = 2.0
    """Added to a blueprint's penalty each time one of its seeds is culled..."""
    penalty_decay: float = 0.8
    """...multiplied by this every epoch..."""
    penalty_threshold: float = 1.5
    """...and blueprints at or above this penalty are not grown."""
    growth: Literal["depth", "width", "both"] = "depth"
    """What the heuristic grows: ``depth`` (a seed module at a slot, after a block),
    ``width`` (new units in a block, merged into it when kept) or ``both`` (width in a
    block narrow enough by ``width_bottleneck``, depth elsewhere)."""
    width_bottleneck: float = 1.0
    """With growth ``both``: widen a block instead of growing a seed after it when its
    units are at most this fraction of the host's mean units per block; a narrow block
    drops what no seed after it can recover."""

    def __post_init__(self) -> None:
        _at_least(self, "start_epoch", 1)
        _at_least(self, "min_epochs_left", 0)
        _at_least(self, "stalled_training_epochs", 1)
        if not self.width_bottleneck > 0.0:
            raise ValueError(f"width_bottleneck must be > 0, got {self.width_bottleneck}")
        for name in ("max_growth_params", "max_growth_flops"):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name} must be >= 0 (or null for no budget), got {value}")


@dataclass(frozen=True)
class GrowthStep:
    """One germination of a scripted schedule (`ScheduleConfig`)."""

    epoch: int
    """Germinate after this epoch's measurements, or at the first later epoch the slot
    is open (1-based)."""
    slot: str
    """The slot, e.g. ``r0c1``; a width blueprint there widens the block before it."""
    blueprint: str
    """A depth or width blueprint that fits the host there (``esper`` lists them)."""
    blend: BlendAlgorithm = BlendAlgorithm.LINEAR
    """How its alpha rises (a width seed never blends gated)."""

    def __post_init__(self) -> None:
        _at_least(self, "epoch", 1)


@dataclass(frozen=True)
class ScheduleConfig:
    """A scripted controller's plan (see `esper.controller.schedule`): what to grow
    where and when, and when to ask for each seed to be kept. ``esper search`` searches
    this family; its best plan is a ``--config`` file of this section."""

    steps: tuple[GrowthStep, ...] = ()
    """The germinations, at most one per slot."""
    fossilize_after: int = 0
    """Ask to fossilize a seed once it has been on probation this many epochs (gate G5
    still decides; 0: as soon as it passes, as the heuristic does)."""
    stalled_training_epochs: int = 8
    """Cull a seed still in TRAINING after this many epochs (gate G2 keeps it from
    blending), as the heuristic does."""

    def __post_init__(self) -> None:
        _at_least(self, "fossilize_after", 0)
        _at_least(self, "stalled_training_epochs", 1)
        slots = [step.slot for step in self.steps]
        twice = sorted({s for s in slots if slots.count(s) > 1})
        if twice:
            raise ValueError(f"schedule grows slot {', '.join(twice)} twice: one step per slot")


@dataclass(frozen=True)
class EpisodeConfig:
    """Everything one episode needs besides its data, model and controller."""

    epochs: int = 30
    """Epochs in the episode (1-based: epoch 1 .. epochs)."""
    seed: int = 0
    """Seed for torch, data order and every other source of randomness."""
    max_seeds: int | None = None
    """At most this many seeds germinated in the episode (None: unlimited)."""
    max_live_seeds: int | None = None
    """At most this many seeds alive (not fossilized) at once (None: one per slot)."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    signals: SignalConfig = field(default_factory=SignalConfig)
    governor: GovernorConfig = field(default_factory=GovernorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        _at_least(self, "epochs", 1)
        _at_least(self, "max_seeds", 0)
        _at_least(self, "max_live_seeds", 1)
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in 0..{MAX_SEED}, got {self.seed}")
        reject_non_finite(self)


C = TypeVar("C")

MAX_SEED = 2**32 - 1
"""Largest run seed: the data order seeds a generator with ``seed * 1_000_003 + epoch``,
which must stay within torch's 64-bit seed range."""


def reject_non_finite(config: object) -> None:
    """Raise ValueError naming the first NaN or infinite float anywhere in ``config``.

    A NaN threshold compares false with everything, so it silently switches a check off;
    an infinite width or learning rate fails later with a traceback instead of here.
    """
    for path, value in _floats(to_dict(config), ""):
        if not math.isfinite(value):
            raise ValueError(f"{path} must be a finite number, got {value}")


def _floats(data: Any, path: str) -> list[tuple[str, float]]:
    if isinstance(data, dict):
        return [f for k, v in data.items() for f in _floats(v, f"{path}.{k}" if path else k)]
    if isinstance(data, list):
        return [f for i, v in enumerate(data) for f in _floats(v, f"{path}[{i}]")]
    return [(path, data)] if isinstance(data, float) else []


def _at_least(config: object, name: str, low: int) -> None:
    value = getattr(config, name)
    if value is not None and value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")


def to_dict(config: Any) -> Any:
    """Plain-data form of a config or any other frozen dataclass (dataclasses and mappings
    to dicts, enums to values, tuples to lists): JSON-compatible, and safe for
    ``torch.load(weights_only=True)``. `from_dict` rebuilds it from the type hints."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Enum):
        return config.value
    if isinstance(config, Mapping):
        return {key: to_dict(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [to_dict(v) for v in config]
    return config


def from_dict(cls: type[C], data: Any, path: str = "") -> C:
    """Build ``cls`` from plain data, strictly: unknown keys and wrong types are errors."""
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {
        name: _convert(hints[name], value, f"{path + '.' if path else ''}{name}")
        for name, value in data.items()
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {value!r}")
        key_hint, value_hint = args if args else (Any, Any)
        return {
            _convert(key_hint, k, where): _convert(value_hint, v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        converted = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            valid = ", ".join(str(m.value) for m in hint)
            raise ConfigError(f"{where}: {value!r} is not one of {valid}") from None
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint)):
        if hint is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


@dataclass(frozen=True)
class RunConfig:
    """One run of the ``esper`` command, as saved to ``config.json`` in the run directory."""

    task: str = "digits"
    """Registered task (``esper --help`` lists them)."""
    controller: str = "heuristic"
    """Who decides: a registered controller (`esper.controller.CONTROLLERS`): the
    rule-based ``heuristic``, the static ``baseline`` that never grows, or ``ppo``, a
    policy trained by ``esper ppo train`` (see ``policy``)."""
    policy: str | None = None
    """The trained policy (a ``policy.pt`` or its run directory) when controller is ppo."""
    policy_sampling: bool = False
    """The ppo controller samples each decision from the policy (with a generator seeded
    by the episode's seed, saved in run checkpoints) instead of taking its most likely
    action. A policy that keeps exploring can put less than half its probability on
    germinating at every epoch and still germinate early when it samples; taking the
    most likely action, it never would."""
    policy_sha256: str | None = None
    """SHA-256 of the policy file when the run's configuration was resolved (set by
    `esper.controller.ControllerSpec.configure`): a compare's cache holds the runs of
    one policy's contents, and a resume refuses a policy file that changed since."""
    slots: tuple[str, ...] | None = None
    """Enabled slot ids (None: every injection point of the host)."""
    width_multiplier: float = 1.0
    """Scale the host's widths (baseline: a static host of the grown size)."""
    batch_size: int = 64
    """Training batch size (the task's default unless set)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | Literal["auto"] | None = "auto"
    """CPU threads for torch. "auto": one when a batch is too small to split, else one
    per physical core that other processes leave free when the run starts
    (`esper.machine.auto_threads`); the count chosen is what the run's config.json
    saves, so a resumed run uses it too. None: torch's default (one per core)."""
    telemetry_level: Literal["off", "lifecycle", "normal", "debug"] = "normal"
    """How much goes to events.jsonl and the console."""
    data_dir: str | None = None
    """Directory with a downloadable data set (cifar10, fashion_mnist)."""
    text_file: str | None = None
    """UTF-8 text file for the text task."""
    decision_fraction: float | None = None
    """Image tasks: the share of the training data held out as the decision split, which
    every epoch's evaluation, the controllers, gates, counterfactuals and reward read;
    the model never trains on it, and the final report reads the test split instead.
    None: the task's (digits 0.2, CIFAR-10 and Fashion-MNIST 0.1)."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    heuristic: HeuristicConfig = field(default_factory=HeuristicConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """The scripted controller's plan (controller ``schedule``)."""

    def __post_init__(self) -> None:
        _at_least(self, "batch_size", 1)
        if self.threads != "auto":
            _at_least(self, "threads", 1)
        reject_non_finite(self)
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}")
        if self.slots is not None and len(set(self.slots)) != len(self.slots):
            raise ValueError(f"slots lists a slot twice: {' '.join(self.slots)}")
        if self.decision_fraction is not None and not 0 < self.decision_fraction < 1:
            raise ValueError(f"decision_fraction must be in (0, 1), got {self.decision_fraction}")


def observing_every_seed(config: RunConfig) -> RunConfig:
    """``config`` measuring every blended seed's counterfactual every epoch, as the
    learned controller needs (its observation carries them)."""
    training = replace(config.episode.training, counterfactuals="live")
    return replace(config, episode=replace(config.episode, training=training))


def merge(base: Mapping[str, Any], *layers: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """``base`` with each of ``layers`` merged in, in order, key by key at every depth: a
    layer that sets ``episode.optim.weight_decay`` keeps every other optimizer setting.
    A value that is not a section replaces; a section (JSON object) given where ``base``
    holds another kind of value, or anything but an object where it holds a section, is
    a `ConfigError` naming the key."""
    merged = dict(base)
    for layer in layers:
        for key, value in layer.items():
            where = f"{path}.{key}" if path else str(key)
            old = merged.get(key)
            if isinstance(old, Mapping):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where}: expected a JSON object (a section), got {value!r}")
                merged[key] = merge(old, value, path=where)
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


SHORTCUTS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "epochs": ("episode", "epochs"),
        "seed": ("episode", "seed"),
        "max_seeds": ("episode", "max_seeds"),
        "max_batches": ("episode", "training", "max_batches"),
        "max_val_batches": ("episode", "training", "max_val_batches"),
        "compile": ("episode", "training", "compile"),
    }
)
"""Flat names (the command line's flags) of nested `RunConfig` fields; every top-level
field (``task``, ``batch_size``, ``data_dir``, ...) is a shortcut for itself."""


def shortcuts(values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested `RunConfig` layer that flat ``values`` stand for (`SHORTCUTS`, or a
    top-level field's own name); None means "not given" and is left out, paths become
    strings."""
    top = {f.name for f in dataclasses.fields(RunConfig)}
    layer: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        where = SHORTCUTS.get(name) or ((name,) if name in top else None)
        if where is None:
            valid = ", ".join([*SHORTCUTS, *sorted(top)])
            raise ConfigError(f"unknown setting {name!r}; settings: {valid}")
        node = layer
        for key in where[:-1]:
            node = node.setdefault(key, {})
        node[where[-1]] = str(value) if isinstance(value, PurePath) else value
    return layer
