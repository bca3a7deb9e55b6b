"""The controller registry: every controller a run can name, and what the rest of Esper
needs to know about it.

A run's ``controller`` (`esper.config.RunConfig.controller`) is a name registered here.
The command line makes one command per controller (``esper heuristic``, ``esper
baseline``, ``esper ppo run``), ``esper compare`` one arm each, and a run builds its
controller through `ControllerSpec.build`. Adding a controller is one module with a
``build(context)`` function and one registration::

    CONTROLLERS.add("random", ControllerSpec(
        name="random", builder="my_package.random_controller:build",
        help="grow at random", command=("random",), arm="random"))

Torch-free on purpose (``esper --help`` lists the commands at once): a spec names its
builder by import path (``module:function``), imported only when a run builds it, as a
task names its data loader.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from esper.config import RunConfig, observing_every_seed
from esper.contracts import StatefulController
from esper.registry import Registry

__all__ = [
    "CONTROLLERS",
    "POLICY_FILE",
    "SHIPPED_POLICIES",
    "ControllerContext",
    "ControllerSpec",
    "build_controller",
    "get_controller",
    "policy_digest",
    "policy_file",
    "policy_source",
    "shipped_policies",
]

POLICY_FILE = "policy.pt"
"""The policy file in a training directory (``esper ppo train --out``)."""


SHIPPED_POLICIES = Path(__file__).resolve().parent.parent / "policies"
"""The learned policies that come with Esper: ``esper/policies/NAME/``, each a
`POLICY_FILE`, the ``config.json`` of the training that made it, and ``policy.json``:
the command that trained it, its commit and its evaluation."""


def shipped_policies() -> list[str]:
    """The names of the policies that come with Esper (`SHIPPED_POLICIES`)."""
    if not SHIPPED_POLICIES.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_POLICIES.iterdir() if (p / POLICY_FILE).is_file())


def policy_source(source: str | Path) -> Path:
    """What ``--policy`` names: a path that exists (a training directory or a policy
    file), else the shipped policy of that name (`shipped_policies`), else the path
    (loading it then says what is missing)."""
    path = Path(source)
    shipped = SHIPPED_POLICIES / str(source)
    if path.exists() or len(path.parts) != 1 or not (shipped / POLICY_FILE).is_file():
        return path
    return shipped


def policy_file(source: str | Path) -> Path:
    """The policy file ``source`` names (`policy_source`): itself, or the `POLICY_FILE`
    of a directory."""
    path = policy_source(source)
    return path / POLICY_FILE if path.is_dir() else path


def policy_digest(source: Path) -> str | None:
    """SHA-256 of the policy file ``source`` names (`policy_file`); None if it cannot be
    read (loading it says why, in one line)."""
    digest = hashlib.sha256()
    try:
        with policy_file(source).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


@dataclass(frozen=True)
class ControllerContext:
    """What a controller is built from: the run's configuration and its episode."""

    config: RunConfig
    blueprints: tuple[str, ...]
    """The blueprints that fit the host's topology, in registry order."""
    slot_ids: tuple[str, ...]
    """The enabled slots, in depth order."""
    random_guess_loss: float
    """Loss of a uniform prediction on the task (a policy's observation scale)."""
    width_blueprints: tuple[str, ...] = ()
    """The width blueprints (`esper.model.width`) that fit the host's layers."""


ControllerBuilder = Callable[[ControllerContext], StatefulController]


@dataclass(frozen=True)
class ControllerSpec:
    """A registered controller."""

    name: str
    """The name a run's configuration gives (``controller``)."""
    builder: str
    """Import path ``module:function`` of its ``build(ControllerContext)``, which raises
    ValueError with a message naming the fix when the run cannot use it."""
    help: str
    """One line for ``esper --help``."""
    command: tuple[str, ...]
    """The ``esper`` command that trains its runs, e.g. ``("heuristic",)`` or
    ``("ppo", "run")``."""
    arm: str
    """Its arm in ``esper compare --arms`` (``ppo:DIR`` when it needs a policy)."""
    label: str = ""
    """How compare tables show the arm (default: the arm)."""
    description: str = ""
    """The command's ``--help`` text (default: `help`)."""
    grows: bool = True
    """It may germinate seeds (``static-matched`` arms are sized from such runs)."""
    observes_every_seed: bool = False
    """It reads every blended seed's contribution every epoch, so its runs measure them
    all (``counterfactuals = 'live'``, `esper.config.observing_every_seed`)."""
    needs_policy: bool = False
    """It drives runs with a trained policy (``--policy``, ``RunConfig.policy``)."""

    @property
    def command_line(self) -> str:
        """The command as typed, e.g. ``ppo run``."""
        return " ".join(self.command)

    @property
    def arm_label(self) -> str:
        return self.label or self.arm

    def configure(self, config: RunConfig) -> RunConfig:
        """``config`` as this controller's runs need it: every blended seed measured each
        epoch if it observes them, and the SHA-256 of its policy file if it needs one
        (saved so in the run's config.json, so a compare's cache and a resume see the
        same settings, and the same policy)."""
        if self.observes_every_seed:
            config = observing_every_seed(config)
        if self.needs_policy and config.policy is not None:
            config = replace(config, policy_sha256=policy_digest(Path(config.policy)))
        return config

    def build(self, context: ControllerContext) -> StatefulController:
        """This controller for the run ``context`` describes."""
        module, _, function = self.builder.partition(":")
        builder: ControllerBuilder = getattr(importlib.import_module(module), function)
        return builder(context)


CONTROLLERS: Registry[ControllerSpec] = Registry("controller")


def get_controller(name: str) -> ControllerSpec:
    """The controller ``name``; unknown names raise an error listing the valid ones."""
    return CONTROLLERS.get(name)


def build_controller(context: ControllerContext) -> StatefulController:
    """The controller the run's configuration names, built for it."""
    return get_controller(context.config.controller).build(context)


for _spec in (
    ControllerSpec(
        name="heuristic",
        builder="esper.controller.heuristic:build",
        help="grow the network with the rule-based heuristic controller",
        description="Train the task's host while the heuristic controller germinates, "
        "blends, fossilizes and culls seeds. Writes a run directory (see --out).",
        command=("heuristic",),
        arm="heuristic",
    ),
    ControllerSpec(
        name="baseline",
        builder="esper.controller.static:build",
        help="train the same task, budget and seed with no growth (the static comparison)",
        description="Train the task's host as a fixed network: same data, epochs, seed and "
        "optimizer as 'esper heuristic', but no seed is ever germinated.",
        command=("baseline",),
        arm="static",
        grows=False,
    ),
    ControllerSpec(
        name="schedule",
        builder="esper.controller.schedule:build",
        help="grow by a scripted plan (the run's schedule section, e.g. from 'esper search')",
        description="Train the task's host while a scripted plan germinates seeds at fixed "
        "epochs and slots (the schedule section of --config: steps of epoch, slot, "
        "blueprint and blend, and fossilize_after); 'esper search' finds such plans.",
        command=("schedule",),
        arm="schedule",
    ),
    ControllerSpec(
        name="ppo",
        builder="esper.rl.agent:build",
        help="one episode driven by a trained policy, with the run directory of 'heuristic'",
        description="Train the task's host while a trained policy decides; writes the same "
        "run directory and timeline as 'esper heuristic'.",
        command=("ppo", "run"),
        arm="ppo",
        label="learned",
        observes_every_seed=True,
        needs_policy=True,
    ),
):
    CONTROLLERS.add(_spec.name, _spec)
