"""PPO training reports: the per-update file, its summary and the training curve.

``esper ppo train`` appends one `UpdateRow` per PPO update to ``updates.jsonl``;
`plot_training` draws ``training_curve.png`` from those rows and `summarize_updates`
condenses them, so ``esper report``, ``esper watch`` and TensorBoard all read the same
record. Torch-free: reading a training directory needs no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

from esper.config import from_dict

__all__ = [
    "UPDATES_FILE",
    "UpdateRow",
    "parse_update",
    "plot_training",
    "read_updates",
    "summarize_updates",
]

UPDATES_FILE = "updates.jsonl"


@dataclass(frozen=True)
class UpdateRow:
    """One update, as written to ``updates.jsonl`` (`esper.rl.ppo.UpdateStats` has what
    the PPO numbers mean)."""

    update: int
    episodes: int
    mean_return: float
    mean_final_accuracy: float
    mean_added_params: float
    mean_seeds_kept: float
    illegal_fraction: float
    learning_rate: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    ratio_min: float
    ratio_max: float
    explained_variance: float
    rollout_seconds: float
    update_seconds: float
    approx_kl_last: float = math.nan
    """Approximate KL on the update's last minibatch (``approx_kl`` is the mean over its
    minibatches); nan in rows written before it was recorded."""
    reference_kl: float = math.nan
    """KL of the policy from the cloned one, the penalty's (nan without one)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                for k, v in dataclasses.asdict(self).items()
            }
        )


def parse_update(line: str) -> UpdateRow:
    """One line of ``updates.jsonl`` (``null`` stands for a number that was not finite).

    Raises ValueError (JSONDecodeError for a line cut short) if it is not an update row."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    cleaned = {k: math.nan if v is None else v for k, v in data.items()}
    row: UpdateRow = from_dict(UpdateRow, cleaned)  # ConfigError (a ValueError) if not
    return row


def read_updates(path: Path) -> list[UpdateRow]:
    """Every row of an ``updates.jsonl`` (none if there is no such file), read as strictly
    as a run's history (`esper.telemetry.report.read_history`): a last line without its
    newline was cut short by a crash and is left out; a damaged line anywhere else is a
    ValueError naming it (``line N: not an update row (...)``)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    # The last piece is b"" after the final newline, or a line a crash cut short: that
    # update never completed, so it is not a row either.
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            rows.append(parse_update(line.decode("utf-8")))
        except (ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError too
            raise ValueError(f"line {number}: not an update row ({error})") from None
    return rows


def summarize_updates(rows: Sequence[UpdateRow]) -> dict[str, Any]:
    """The last update's numbers, the best mean return and final accuracy, and time spent."""
    if not rows:
        raise ValueError("the training has no completed update yet")
    last = rows[-1]

    def best(key: str) -> UpdateRow:
        finite = [r for r in rows if math.isfinite(getattr(r, key))]
        return max(finite or rows, key=lambda r: getattr(r, key))

    by_return, by_accuracy = best("mean_return"), best("mean_final_accuracy")
    return {
        "updates": last.update,
        "episodes": last.episodes,
        "mean_return": last.mean_return,
        "best_mean_return": by_return.mean_return,
        "best_return_update": by_return.update,
        "mean_final_accuracy": last.mean_final_accuracy,
        "best_mean_final_accuracy": by_accuracy.mean_final_accuracy,
        "best_accuracy_update": by_accuracy.update,
        "mean_added_params": last.mean_added_params,
        "mean_seeds_kept": last.mean_seeds_kept,
        "approx_kl": last.approx_kl,
        "clip_fraction": last.clip_fraction,
        "entropy": last.entropy,
        "explained_variance": last.explained_variance,
        "learning_rate": last.learning_rate,
        "rollout_seconds": sum(r.rollout_seconds for r in rows),
        "update_seconds": sum(r.update_seconds for r in rows),
    }


def plot_training(rows: Sequence[UpdateRow], path: Path, task: str) -> None:
    """Return and final accuracy per update above approx-KL, clip fraction and entropy."""
    fig = Figure(figsize=(9, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    episodes = [r.episodes for r in rows]
    top.plot(episodes, [r.mean_final_accuracy for r in rows], color="black", label="final acc (%)")
    twin = top.twinx()
    twin.plot(episodes, [r.mean_return for r in rows], color="#d35400", label="return")
    top.set_ylabel("mean final accuracy (%)")
    twin.set_ylabel("mean return", color="#d35400")
    top.set_title(f"PPO on {task}: per update")
    top.grid(alpha=0.3)
    bottom.plot(episodes, [r.approx_kl for r in rows], label="approx KL")
    bottom.plot(episodes, [r.clip_fraction for r in rows], label="clip fraction")
    bottom.plot(episodes, [r.entropy / 10 for r in rows], label="entropy / 10")
    bottom.set_xlabel("training episodes")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
