"""Run reports: the per-epoch history file, the summary and the timeline plot.

Every run writes ``history.jsonl``, one `EpochCompleted` per epoch (`history_line`,
`esper.telemetry.sinks.HistorySink` writes them as they come, at every telemetry level:
it is the run's result). `summarize` and `plot_timeline` rebuild ``summary.json`` and
``timeline.png`` from it, so ``esper report RUN_DIR`` works on finished and interrupted
runs alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from esper.lifecycle import SeedStage
from esper.telemetry.events import EpochCompleted, parse_row

__all__ = [
    "STAGE_COLOURS",
    "format_flops",
    "plot_timeline",
    "read_history",
    "summarize",
]


def format_flops(flops: float) -> str:
    """FLOPs with an SI prefix, e.g. ``5.53 TFLOPs``."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}FLOPs"
    return f"{flops:.3g} FLOPs"


def read_history(path: Path) -> list[EpochCompleted]:
    """All epochs of a ``history.jsonl``; a malformed line is named in the error, and a
    last line without its newline (cut short) is left out."""
    rows = []
    # The last piece is "" after the final newline, or a line whose writing a crash or a
    # full disk cut short: that epoch never completed, so it is not a row either.
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            rows.append(parse_row(line))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a history row ({error})") from None
    return rows


def summarize(rows: Sequence[EpochCompleted]) -> dict[str, Any]:
    """Final and best accuracy, parameters, seed counts and wall time of a run."""
    if not rows:
        raise ValueError("the run has no completed epoch yet")
    last = rows[-1]
    return {
        "epochs": last.epoch,
        "final_accuracy": last.val_accuracy,
        "test_accuracy": last.test_accuracy,
        "best_accuracy": max(r.val_accuracy for r in rows),
        "best_epoch": max(rows, key=lambda r: r.val_accuracy).epoch,
        "final_val_loss": last.val_loss,
        "host_params": last.host_params,
        "added_params": last.seed_params,
        "params": last.params,
        "train_flops": sum(r.train_flops for r in rows),
        "eval_flops": sum(r.eval_flops for r in rows),
        "seeds_germinated": last.germinated,
        "seeds_fossilized": last.fossilized,
        "seeds_culled": last.culled,
        "rollbacks": sum(1 for r in rows if r.rollback),
        "total_reward": sum(r.reward for r in rows),
        "wall_seconds": last.seconds,
    }


_ACTION_STYLE = {
    "GERMINATE": ("^", "#d35400", "germinate"),
    "FOSSILIZE": ("*", "#1e8449", "fossilize"),
    "CULL": ("X", "#c0392b", "cull"),
}

STAGE_COLOURS: Mapping[SeedStage, str] = {
    SeedStage.GERMINATED: "#f6e58d",
    SeedStage.TRAINING: "#f0932b",
    SeedStage.BLENDING: "#4a90d9",
    SeedStage.PROBATIONARY: "#9b59b6",
    SeedStage.FOSSILIZED: "#27ae60",
    SeedStage.CULLED: "#c0392b",
    SeedStage.EMBARGOED: "#e8a0a0",
    SeedStage.RESETTING: "#bdc3c7",
}


def plot_timeline(rows: Sequence[EpochCompleted], path: Path, title: str) -> None:
    """Validation accuracy over epochs above one band per slot showing its stages
    (coloured spans) and alpha (the black curve inside the band, 0 at the bottom)."""
    slot_ids = sorted({sid for r in rows for sid in r.slots}, reverse=True)
    epochs = [r.epoch for r in rows]
    fig = Figure(figsize=(10, 4 + 0.6 * len(slot_ids)))
    acc_ax, slot_ax = fig.subplots(
        2,
        1,
        sharex=True,
        gridspec_kw={"height_ratios": [3, max(1.0, 0.6 * len(slot_ids))]},
    )
    acc_ax.plot(epochs, [r.val_accuracy for r in rows], color="black", label="validation")
    acc_ax.plot(
        epochs, [r.train_accuracy for r in rows], color="grey", ls="--", lw=1, label="train"
    )
    acted = [(r, r.action) for r in rows if r.outcome == "applied" and r.action != "WAIT"]
    # A seed culled by the lifecycle itself (probation) shows CULLED for one epoch; a
    # controller's cull is already in the actions.
    acted += [
        (r, f"CULL {sid} (auto)")
        for r in rows
        for sid, s in r.slots.items()
        if s.stage is SeedStage.CULLED
    ]
    acted.sort(key=lambda pair: pair[0].epoch)
    for n, (r, action) in enumerate(acted):
        op, _, rest = action.partition(" ")
        style = _ACTION_STYLE.get(op, ("o", "grey", op.lower()))
        marker, colour, verb = style
        acc_ax.scatter([r.epoch], [r.val_accuracy], marker=marker, s=90, color=colour, zorder=3)
        label = f"{verb} {rest.replace(' ', ' ')}".strip()
        offset = -16 if n % 2 == 0 else 10  # alternate below/above so neighbours don't collide
        acc_ax.annotate(
            label,
            (r.epoch, r.val_accuracy),
            textcoords="offset points",
            xytext=(0, offset),
            ha="center",
            fontsize=7,
            color=colour,
        )
    for r in rows:
        if r.rollback:
            acc_ax.axvline(r.epoch, color="#c0392b", ls=":", lw=1)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title(title)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right", fontsize=8)
    for index, sid in enumerate(slot_ids):
        _slot_band(slot_ax, rows, sid, index)
    slot_ax.set_yticks(range(len(slot_ids)), slot_ids)
    slot_ax.set_ylim(-0.6, len(slot_ids) - 0.4)
    slot_ax.set_xlabel("epoch")
    slot_ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    used = {s.stage for r in rows for s in r.slots.values()} & set(STAGE_COLOURS)
    handles: list[Any] = [
        Patch(color=c, label=stage.name.lower())
        for stage, c in STAGE_COLOURS.items()
        if stage in used
    ]
    handles.append(Line2D([], [], color="black", lw=1.2, label="alpha (0-1)"))
    if handles:
        slot_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _slot_band(ax: Any, rows: Sequence[EpochCompleted], slot_id: str, index: int) -> None:
    for r in rows:
        slot = r.slots.get(slot_id)
        if slot is None or slot.stage not in STAGE_COLOURS:
            continue
        colour = STAGE_COLOURS[slot.stage]
        ax.broken_barh([(r.epoch - 0.5, 1.0)], (index - 0.4, 0.8), color=colour)
    alphas = [
        (r.epoch, r.slots[slot_id].alpha)
        for r in rows
        if slot_id in r.slots and r.slots[slot_id].stage in STAGE_COLOURS
    ]
    if alphas:
        xs, ys = zip(*alphas, strict=True)
        ax.plot(xs, [index - 0.4 + 0.8 * a for a in ys], color="black", lw=1.2)
    previous = SeedStage.DORMANT
    for r in rows:
        slot = r.slots.get(slot_id)
        stage = slot.stage if slot is not None else SeedStage.DORMANT
        training = stage is SeedStage.TRAINING
        if slot is not None and slot.blueprint and training and previous is not SeedStage.TRAINING:
            ax.text(r.epoch - 0.45, index + 0.22, slot.blueprint, fontsize=7, va="center")
        previous = stage
