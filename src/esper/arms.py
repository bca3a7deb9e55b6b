"""What ``esper compare`` compares: its arms and seeds, parsed from the command line.

Torch-free, so that ``esper compare --help`` and a bad ``--arms`` or ``--seeds`` need no
heavy imports; `esper.compare` trains the arms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from esper.controller.registry import CONTROLLERS, ControllerSpec, get_controller

__all__ = ["MAX_SEED_COUNT", "Arm", "arm_help", "parse_arms", "parse_seeds"]

STATIC = "baseline"
"""The controller of the static arms (``static``, ``static@X``, ``static-matched``)."""


def arm_help() -> str:
    """The arms ``--arms`` takes, in words: one per registered controller, and the static
    host's widened forms."""
    names = [
        f"{spec.arm}:DIR (a policy trained by 'esper ppo train', shown as '{spec.arm_label}')"
        if spec.needs_policy
        else spec.arm
        for _, spec in CONTROLLERS.items()
    ]
    return (
        f"{', '.join(names)}, static-matched (a static host widened to the grown runs' mean "
        "final parameter count) or static@X (every host width scaled by X, e.g. static@1.5)"
    )


@dataclass(frozen=True)
class Arm:
    """One way to train the task. ``width`` None means "matched": resolved from the
    grown runs' parameter counts once they are done."""

    label: str
    controller: str
    """A registered controller (`esper.controller.CONTROLLERS`)."""
    width: float | None = 1.0
    policy: str | None = None
    """The trained policy an arm of a controller that needs one runs with."""

    @property
    def grows(self) -> bool:
        return get_controller(self.controller).grows


def _controller_arm(name: str) -> Arm | None:
    """The arm of a registered controller (``heuristic``, ``ppo:DIR``), or None."""
    arm_name, _, argument = name.partition(":")
    spec: ControllerSpec | None = next(
        (s for _, s in CONTROLLERS.items() if s.arm == arm_name), None
    )
    if spec is None or spec.name == STATIC:
        return None
    if spec.needs_policy != bool(argument):
        form = f"{spec.arm}:DIR" if spec.needs_policy else spec.arm
        raise ValueError(f"arm {name!r}: write it as {form}")
    return Arm(spec.arm_label, spec.name, 1.0, argument or None)


def _static_arm(name: str) -> Arm | None:
    """``static``, ``static-matched`` or ``static@X``, or None."""
    if name == "static":
        return Arm("static", STATIC, 1.0)
    if name == "static-matched":
        return Arm("static-matched", STATIC, None)
    if not name.startswith("static@"):
        return None
    try:
        width = float(name.removeprefix("static@"))
    except ValueError:
        width = math.nan
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"arm {name!r}: the width after @ must be a positive number")
    return Arm(f"static@{width:g}", STATIC, width)


def parse_arms(text: str) -> list[Arm]:
    """Arms from ``static,heuristic,static-matched,static@2``; ValueError names the fix."""
    arms: list[Arm] = []
    for raw in text.split(","):
        name = raw.strip()
        arm = _static_arm(name) or _controller_arm(name)
        if arm is None:
            raise ValueError(f"unknown arm {name!r}; arms are {arm_help()}")
        if any(a.label == arm.label for a in arms):
            raise ValueError(f"arm {arm.label!r} is listed twice")
        arms.append(arm)
    if any(a.width is None for a in arms) and not any(a.grows for a in arms):
        raise ValueError("static-matched needs an arm that grows (e.g. heuristic) to match")
    return arms


# A bare number above this is more likely a seed than a count ("--seeds 100" meaning seed
# 100 would otherwise start 100 runs), so it must be written as a range.
MAX_SEED_COUNT = 20


def parse_seeds(text: str) -> list[int]:
    """``5`` (seeds 0-4), ``100-109`` (inclusive) or ``1,3,7``; ValueError names the fix.

    A bare count above ``MAX_SEED_COUNT`` is refused: write it as a range (``0-99``).
    """
    form = "use a count (5), an inclusive range (100-109) or a list (1,3,7)"
    is_list, is_range = "," in text, "-" in text.strip("-")
    try:
        if is_list:
            seeds = [int(part) for part in text.split(",")]
        elif is_range:
            low, high = (int(part) for part in text.split("-", 1))
            if high < low:
                raise ValueError
            seeds = list(range(low, high + 1))
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            seeds = list(range(count))
    except ValueError:
        raise ValueError(f"bad --seeds {text!r}: {form}") from None
    if not (is_list or is_range) and len(seeds) > MAX_SEED_COUNT:
        n = len(seeds)
        raise ValueError(
            f"--seeds {n} would run {n} seeds (0-{n - 1}): write 0-{n - 1} if you mean "
            f"that, or {n}-{n} for seed {n} alone"
        )
    if any(s < 0 or s >= 2**63 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"bad --seeds {text!r}: seeds must be distinct and >= 0; {form}")
    return seeds
