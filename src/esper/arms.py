"""What ``esper compare`` compares: its arms and seeds, parsed from the command line.

Torch-free, so that ``esper compare --help`` and a bad ``--arms`` or ``--seeds`` need no
heavy imports; `esper.compare` trains the arms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from esper.config import MAX_SEED
from esper.controller.registry import CONTROLLERS, ControllerSpec, get_controller

__all__ = [
    "MAX_RUNS",
    "MAX_SEED_COUNT",
    "Arm",
    "arm_help",
    "check_size",
    "parse_arms",
    "parse_seeds",
]

STATIC = "baseline"
"""The controller of the static arms (``static``, ``static@X``, ``static-matched``)."""


def arm_help() -> str:
    """The arms ``--arms`` takes, in words: one per registered controller, and the static
    host's widened forms."""
    names = [
        f"{spec.arm}:DIR (a policy trained by 'esper ppo train', shown as '{spec.arm_label}'; "
        f"or {spec.arm}:NAME, a policy that comes with Esper)"
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

    def same_runs(self, other: Arm) -> bool:
        """``other`` trains exactly the runs this arm trains (``static`` and ``static@1``):
        the same controller, policy and fixed width."""
        return self.width is not None and (self.controller, self.width, self.policy) == (
            other.controller,
            other.width,
            other.policy,
        )


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
        twin = next((a for a in arms if a.same_runs(arm)), None)
        if twin is not None:
            raise ValueError(
                f"arms {twin.label!r} and {name!r} are the same runs (controller "
                f"{arm.controller}, width x{arm.width:g}): list it once"
            )
        arms.append(arm)
    if any(a.width is None for a in arms) and not any(a.grows for a in arms):
        raise ValueError("static-matched needs an arm that grows (e.g. heuristic) to match")
    return arms


# A bare number above this is more likely a seed than a count ("--seeds 100" meaning seed
# 100 would otherwise start 100 runs), so it must be written as a range.
MAX_SEED_COUNT = 20

MAX_RUNS = 1000
"""The most runs (arms x seeds) one compare trains: more is almost always a typo
(``--seeds 0-100000``); a study that big is split over several compares."""


def parse_seeds(text: str) -> list[int]:
    """``5`` (seeds 0-4), ``100-109`` (inclusive) or ``1,3,7``; ValueError names the fix.

    A bare count above ``MAX_SEED_COUNT`` is refused: write it as a range (``0-99``). So
    are more than ``MAX_RUNS`` seeds (before a list of them is built) and seeds outside
    ``0..MAX_SEED`` (`esper.config.MAX_SEED`).
    """
    form = "use a count (5), an inclusive range (100-109) or a list (1,3,7)"
    is_list, is_range = "," in text, "-" in text.strip("-")
    try:
        seeds = _seeds(text, is_list, is_range)
    except ValueError:
        raise ValueError(f"bad --seeds {text!r}: {form}") from None
    # Counted without building the list (len() of a huge range overflows).
    n = seeds.stop - seeds.start if isinstance(seeds, range) else len(seeds)
    if not (is_list or is_range) and n > MAX_SEED_COUNT:
        raise ValueError(
            f"--seeds {n} would run {n} seeds (0-{n - 1}): write 0-{n - 1} if you mean "
            f"that, or {n}-{n} for seed {n} alone"
        )
    if n > MAX_RUNS:
        raise ValueError(
            f"--seeds {text} is {n:,} seeds; a compare trains at most {MAX_RUNS:,} runs "
            "(arms x seeds): use a smaller range, or split the seeds over several compares"
        )
    if any(s < 0 or s > MAX_SEED for s in seeds) or len(set(seeds)) != n:
        raise ValueError(
            f"bad --seeds {text!r}: seeds must be distinct and in 0..{MAX_SEED}; {form}"
        )
    return list(seeds)


def _seeds(text: str, is_list: bool, is_range: bool) -> Sequence[int]:
    """The seeds ``text`` names (a range stays a `range`); ValueError if malformed."""
    if is_list:
        return [int(part) for part in text.split(",")]
    if is_range:
        low, high = (int(part) for part in text.split("-", 1))
        if high < low:
            raise ValueError
        return range(low, high + 1)
    count = int(text)
    if count < 1:
        raise ValueError
    return range(count)


def check_size(arms: Sequence[Arm], seeds: Sequence[int]) -> None:
    """ValueError naming the fix if ``arms`` x ``seeds`` is more than `MAX_RUNS` runs."""
    runs = len(arms) * len(seeds)
    if runs > MAX_RUNS:
        raise ValueError(
            f"{len(arms)} arms x {len(seeds):,} seeds is {runs:,} runs; a compare trains at "
            f"most {MAX_RUNS:,}: use fewer seeds or arms, or split them over several compares"
        )
