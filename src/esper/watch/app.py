"""``esper watch``: a live terminal view of a run or a PPO training, from its files.

A Textual app that polls the directory (`esper.watch.files`, read-only) every
``interval`` seconds. A run shows its accuracy and loss curves, one band per slot with
its stages (colours) and alpha (bar height) over the epochs (the timeline, live), the
latest lifecycle events and gate verdicts with their reasons, and the compute so far; a
PPO training shows return, final accuracy, approx-KL, clip fraction and entropy per
update. Keys: q quits, p pauses (the run goes on; the view stops reading), left/right or
1-9 pick a slot (its band is marked and only its events listed), 0 shows all slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Footer, Header, Static
from textual_plotext import PlotextPlot

from esper.lifecycle import SeedStage
from esper.telemetry.events import (
    EpochCompleted,
    Event,
    GovernorRollback,
    SeedGradients,
)
from esper.telemetry.report import STAGE_COLOURS, format_flops
from esper.telemetry.sinks import event_style, format_event
from esper.telemetry.updates import UpdateRow
from esper.watch.files import Kind, NotARunError, RunFiles, TrainingFiles, classify

__all__ = [
    "EventPanel",
    "RunView",
    "SlotBands",
    "TrainingView",
    "WatchApp",
    "band_cells",
    "compute_table",
    "event_lines",
    "slot_band",
]

_BLOCKS = "▁▂▃▄▅▆▇█"  # alpha as bar height: a live seed shows at least the lowest bar
_FUTURE = "·"
_STEPS = [m * 10**e for e in range(7) for m in (1, 2, 5)]


# ---------------------------------------------------------------- what the panels show


def band_cells(epochs: int, width: int) -> list[int]:
    """The epoch (1-based) each cell of a ``width``-cell band stands for: up to four
    cells per epoch when they fit, else epochs share cells evenly (each cell shows the
    last epoch it covers)."""
    epochs, width = max(1, epochs), max(1, width)
    if epochs <= width:
        repeat = min(4, width // epochs)
        return [epoch for epoch in range(1, epochs + 1) for _ in range(repeat)]
    return [math.ceil((index + 1) * epochs / width) for index in range(width)]


def slot_band(rows: Sequence[EpochCompleted], slot_id: str, cells: Sequence[int]) -> Text:
    """One slot's band: each cell coloured by the slot's stage at its epoch, its height
    the alpha; dormant epochs blank, epochs still to come dotted."""
    by_epoch = {row.epoch: row for row in rows}
    text = Text()
    first = 1
    for index, last in enumerate(cells):
        # The cell's newest written epoch: a cell of several epochs fills in as they come.
        first = cells[index - 1] + 1 if index and cells[index - 1] < last else first
        row = next((by_epoch[e] for e in range(last, first - 1, -1) if e in by_epoch), None)
        slot = row.slots.get(slot_id) if row is not None else None
        if row is None:
            text.append(_FUTURE, style="grey35")
        elif slot is None or slot.stage not in STAGE_COLOURS:
            text.append(" ")
        else:
            level = min(len(_BLOCKS) - 1, max(0, round(slot.alpha * (len(_BLOCKS) - 1))))
            text.append(_BLOCKS[level], style=STAGE_COLOURS[slot.stage])
    return text


def _axis(cells: Sequence[int], indent: int) -> Text:
    """Epoch numbers under the bands: 1, then every 1, 2, 5, 10, 20, ... epochs, as
    often as they fit without running into each other."""
    per_cell = cells[-1] / len(cells)
    width = len(str(cells[-1])) + 1
    step = next(s for s in _STEPS if s / per_cell >= width + 1)
    line = [" "] * (len(cells) + width)
    free_from = previous = 0
    for index, last in enumerate(cells):
        epochs = range(previous + 1, last + 1)
        previous = last
        # Epoch 1 marks the start unless the next label would crowd it.
        label = next((e for e in epochs if e % step == 0 or (e == 1 and step >= 5)), None)
        if label is not None and index >= free_from:
            line[index : index + len(str(label))] = list(str(label))
            free_from = index + len(str(label)) + 1
    return Text(" " * indent + "".join(line).rstrip(), style="grey62")


def _latest_contribution(rows: Sequence[EpochCompleted], slot_id: str) -> str:
    for row in reversed(rows):
        slot = row.slots.get(slot_id)
        if slot is None or slot.stage is SeedStage.DORMANT:
            return ""
        if slot.contribution is not None:
            se = f"±{slot.contribution_se:.1f}" if slot.contribution_se is not None else ""
            return f" {slot.contribution:+.1f}{se} pp"
    return ""


def _slot_detail(rows: Sequence[EpochCompleted], slot_id: str) -> Text:
    slot = rows[-1].slots.get(slot_id) if rows else None
    if slot is None or slot.stage is SeedStage.DORMANT:
        return Text("dormant", style="grey50")
    colour = STAGE_COLOURS.get(slot.stage, "")
    text = Text(slot.stage.name.lower(), style=f"bold {colour}")
    text.append(f" {slot.blueprint or ''} α{slot.alpha:.2f}")
    text.append(_latest_contribution(rows, slot_id))
    text.append(f" {slot.params:,} params", style="grey62")
    return text


def _legend(rows: Sequence[EpochCompleted]) -> Text:
    used = {s.stage for r in rows for s in r.slots.values()}
    text = Text("stage: ", style="grey62")
    for stage, colour in STAGE_COLOURS.items():
        if stage in used:
            text.append("█", style=colour)
            text.append(f" {stage.name.lower()}  ")
    text.append("· to come   bar height = alpha", style="grey62")
    return text


def event_lines(events: Sequence[Event], slot: str | None) -> list[Text]:
    """The lifecycle events and gate verdicts worth a line (not epoch summaries or
    gradient statistics), optionally only those about ``slot``."""
    lines = []
    for event in events:
        if isinstance(event, EpochCompleted | SeedGradients):
            continue
        if slot is not None:
            about = getattr(event, "slot", None)
            if isinstance(event, GovernorRollback):
                about = slot if slot in event.culled_slots else None
            if about != slot:
                continue
        lines.append(Text(format_event(event), style=event_style(event)))
    return lines


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def compute_table(rows: Sequence[EpochCompleted], planned: int | None) -> Table:
    """Compute so far: FLOPs, time, parameters, seeds, rollbacks and accuracy."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    last = rows[-1]
    train = sum(r.train_flops for r in rows)
    evaluation = sum(r.eval_flops for r in rows)
    share = f" ({100 * evaluation / (train + evaluation):.0f}% of all)" if train else ""
    per_epoch = sum(r.epoch_seconds for r in rows) / len(rows)
    best = max(rows, key=lambda r: r.val_accuracy)
    table.add_row("epochs", f"{last.epoch} of {planned if planned is not None else '?'}")
    table.add_row("training", format_flops(train))
    table.add_row("evaluation", format_flops(evaluation) + share)
    table.add_row("wall time", f"{_duration(last.seconds)} ({per_epoch:.1f} s/epoch)")
    if planned is not None and last.epoch < planned and per_epoch > 0:
        table.add_row("to go", f"~{_duration((planned - last.epoch) * per_epoch)}")
    table.add_row(
        "parameters",
        f"{last.params:,} (host {last.host_params:,} + seeds {last.seed_params:,})",
    )
    table.add_row(
        "seeds", f"{last.germinated} germinated, {last.fossilized} kept, {last.culled} culled"
    )
    table.add_row("rollbacks", str(sum(1 for r in rows if r.rollback)))
    table.add_row(
        "accuracy", f"{last.val_accuracy:.2f}% (best {best.val_accuracy:.2f}%, epoch {best.epoch})"
    )
    return table


def _ago(modified: float | None) -> str:
    return "" if modified is None else _duration(time.time() - modified) + " ago"


# ---------------------------------------------------------------- widgets


class SlotBands(Widget):
    """One band per slot: stage colours and alpha over the epochs, the picked slot marked."""

    DEFAULT_CSS = """
    SlotBands { height: auto; border: round $primary-darken-2; padding: 0 1; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: list[EpochCompleted] = []
        self.slot_ids: list[str] = []
        self.planned: int | None = None
        self.selected: str | None = None
        self.border_title = "slots"

    def show(
        self,
        rows: list[EpochCompleted],
        slot_ids: list[str],
        planned: int | None,
        selected: str | None,
    ) -> None:
        self.rows, self.slot_ids, self.planned, self.selected = rows, slot_ids, planned, selected
        self.border_title = "slots" + (f": {selected} picked (0: all)" if selected else "")
        self.refresh(layout=True)

    def render(self) -> RenderableType:
        if not self.slot_ids:
            return Text("no slots", style="grey50")
        label = max(len(s) for s in self.slot_ids) + 2
        details = {sid: _slot_detail(self.rows, sid) for sid in self.slot_ids}
        room = self.size.width - label - 3 - max(d.cell_len for d in details.values())
        epochs = max(self.planned or 0, self.rows[-1].epoch if self.rows else 1)
        cells = band_cells(epochs, max(8, room))
        text = Text(no_wrap=True, overflow="ellipsis")
        for slot_id in self.slot_ids:
            picked = slot_id == self.selected
            text.append(
                ("▶" if picked else " ") + slot_id.ljust(label - 1),
                style="bold reverse" if picked else "bold",
            )
            text.append("│", style="grey50")
            text.append_text(slot_band(self.rows, slot_id, cells))
            text.append("│ ", style="grey50")
            text.append_text(details[slot_id])
            text.append("\n")
        text.append_text(_axis(cells, label + 1))
        text.append("\n")
        text.append_text(_legend(self.rows))
        return text


class EventPanel(Widget):
    """The latest lifecycle events and gate verdicts, newest last (as many as fit)."""

    DEFAULT_CSS = """
    EventPanel { border: round $primary-darken-2; padding: 0 1; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lines: list[Text] = []
        self.border_title = "lifecycle events and gate verdicts"

    def show(self, lines: list[Text], slot: str | None) -> None:
        self.lines = lines
        title = "lifecycle events and gate verdicts"
        self.border_title = f"{title}: {slot} only" if slot else title
        self.refresh()

    def render(self) -> RenderableType:
        if not self.lines:
            return Text("no lifecycle event yet", style="grey50")
        height = max(1, self.size.height)
        return Text("\n").join(line.copy() for line in self.lines[-height:])


def _ticks(low: int, high: int) -> list[int]:
    """At most about six round tick positions from ``low`` to ``high``."""
    step = next(s for s in _STEPS if (high - low) / s <= 6)
    ticks = [t for t in range(0, high + 1, step) if t > low]
    return [low, *ticks] if not ticks or ticks[0] - low >= step / 2 else [low, *ticks[1:]]


def _plot(
    widget: PlotextPlot,
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float], str]],
    x_range: tuple[int, int],
    xlabel: str,
) -> None:
    plt = widget.plt
    plt.clear_data()
    for label, ys, colour in series:
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        if points:
            px, py = zip(*points, strict=True)
            named = {"label": label} if len(series) > 1 else {}  # else the border names it
            plt.plot(list(px), list(py), color=colour, marker="braille", **named)
    low, high = x_range[0], max(x_range[1], int(max(xs, default=0)), x_range[0] + 1)
    plt.xlim(low, high)
    plt.xticks([float(t) for t in _ticks(low, high)])
    plt.xlabel(xlabel)
    widget.refresh()


class RunView(Vertical):
    """The dashboard of a run directory."""

    DEFAULT_CSS = """
    RunView #run-status { height: 2; padding: 0 1; }
    RunView #curves { height: 1fr; min-height: 8; }
    RunView #curves PlotextPlot { border: round $primary-darken-2; }
    RunView #lower { height: 1fr; min-height: 6; }
    RunView #events { width: 3fr; }
    RunView #compute { width: 2fr; border: round $primary-darken-2; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="run-status")
        with Horizontal(id="curves"):
            yield PlotextPlot(id="accuracy")
            yield PlotextPlot(id="loss")
        yield SlotBands(id="slots")
        with Horizontal(id="lower"):
            yield EventPanel(id="events")
            yield Static(id="compute")

    def on_mount(self) -> None:
        self.query_one("#accuracy").border_title = "accuracy (%)"
        self.query_one("#loss").border_title = "loss"
        self.query_one("#compute").border_title = "compute so far"

    def show(self, files: RunFiles, selected: str | None, state: str) -> None:
        rows = files.rows
        last = rows[-1]
        planned = files.planned_epochs
        epochs = [float(r.epoch) for r in rows]
        x_range = (1, planned or last.epoch)
        # Validation last, so that it is drawn over the training curve.
        _plot(
            self.query_one("#accuracy", PlotextPlot),
            epochs,
            [
                ("train", [r.train_accuracy for r in rows], "gray"),
                ("validation", [r.val_accuracy for r in rows], "cyan"),
            ],
            x_range,
            "epoch",
        )
        _plot(
            self.query_one("#loss", PlotextPlot),
            epochs,
            [
                ("train", [r.train_loss for r in rows], "gray"),
                ("validation", [r.val_loss for r in rows], "orange"),
            ],
            x_range,
            "epoch",
        )
        self.query_one(SlotBands).show(rows, files.slot_ids, planned, selected)
        self.query_one(EventPanel).show(event_lines(files.events.records, selected), selected)
        self.query_one("#compute", Static).update(compute_table(rows, planned))
        self.status(files, state)

    def status(self, files: RunFiles, state: str) -> None:
        rows = files.rows
        last = rows[-1]
        best = max(r.val_accuracy for r in rows)
        seed = f", seed {files.seed}" if files.seed is not None else ""
        head = Text(f"{files.controller} on {files.task}{seed}", style="bold")
        head.append(f"   epoch {last.epoch}/{files.planned_epochs or '?'}", style="bold")
        head.append(f"   val {last.val_accuracy:.2f}% (best {best:.2f}%)   ")
        head.append_text(Text.from_markup(state))
        decision = Text(f"epoch {last.epoch}: {last.action}", style="bold")
        if last.outcome != "applied":
            decision.append(f" ({last.outcome})")
        if last.reason:
            decision.append(f" because {last.reason}", style="italic")
        if last.rollback:
            decision.append(f"  ROLLBACK: {last.rollback}", style="bold red")
        self.query_one("#run-status", Static).update(Text("\n").join([head, decision]))


class TrainingView(Vertical):
    """The dashboard of an ``esper ppo train`` directory."""

    DEFAULT_CSS = """
    TrainingView #training-status { height: 1; padding: 0 1; }
    TrainingView Grid { grid-size: 3 2; height: 1fr; }
    TrainingView PlotextPlot { border: round $primary-darken-2; }
    TrainingView #latest { border: round $primary-darken-2; padding: 0 1; }
    """

    PLOTS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("return", "mean return", "orange"),
        ("final_accuracy", "mean final accuracy (%)", "cyan"),
        ("approx_kl", "approx KL", "magenta"),
        ("clip_fraction", "clip fraction", "green"),
        ("entropy", "entropy", "yellow"),
    )

    def compose(self) -> ComposeResult:
        yield Static(id="training-status")
        with Grid():
            for name, _, _ in self.PLOTS[:2]:
                yield PlotextPlot(id=name)
            yield Static(id="latest")
            for name, _, _ in self.PLOTS[2:]:
                yield PlotextPlot(id=name)

    def on_mount(self) -> None:
        for name, title, _ in self.PLOTS:
            self.query_one(f"#{name}").border_title = title
        self.query_one("#latest").border_title = "latest update"

    def show(self, files: TrainingFiles, state: str) -> None:
        rows = files.rows
        xs = [float(r.episodes) for r in rows]
        values = {
            "return": [r.mean_return for r in rows],
            "final_accuracy": [r.mean_final_accuracy for r in rows],
            "approx_kl": [r.approx_kl for r in rows],
            "clip_fraction": [r.clip_fraction for r in rows],
            "entropy": [r.entropy for r in rows],
        }
        x_range = (0, files.planned_episodes or rows[-1].episodes)
        for name, title, colour in self.PLOTS:
            widget = self.query_one(f"#{name}", PlotextPlot)
            _plot(widget, xs, [(title, values[name], colour)], x_range, "training episodes")
        self.query_one("#latest", Static).update(_latest_table(rows, files.planned_updates))
        self.status(files, state)

    def status(self, files: TrainingFiles, state: str) -> None:
        last = files.rows[-1]
        head = Text(f"PPO on {files.task}", style="bold")
        head.append(f"   update {last.update}/{files.planned_updates or '?'}", style="bold")
        head.append(f"   {last.episodes}/{files.planned_episodes or '?'} episodes")
        if files.epochs is not None:
            head.append(f" of {files.epochs} epochs")
        head.append("   ")
        head.append_text(Text.from_markup(state))
        self.query_one("#training-status", Static).update(head)


def _latest_table(rows: Sequence[UpdateRow], planned: int | None) -> Table:
    last = rows[-1]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    spent = sum(r.rollout_seconds + r.update_seconds for r in rows)
    per_update = spent / len(rows)
    left = ""
    if planned is not None and last.update < planned:
        left = f", ~{_duration((planned - last.update) * per_update)} left"
    for name, value in (
        ("update", f"{last.update} of {planned if planned is not None else '?'}"),
        ("mean return", f"{last.mean_return:+.3f}"),
        ("final accuracy", f"{last.mean_final_accuracy:.2f}%"),
        ("approx KL", f"{last.approx_kl:.4f}"),
        ("clip fraction", f"{last.clip_fraction:.3f}"),
        ("entropy", f"{last.entropy:.3f}"),
        ("explained var.", f"{last.explained_variance:.3f}"),
        ("policy loss", f"{last.policy_loss:+.4f}"),
        ("value loss", f"{last.value_loss:.4f}"),
        ("ratio range", f"{last.ratio_min:.2f}-{last.ratio_max:.2f}"),
        ("illegal actions", f"{100 * last.illegal_fraction:.1f}%"),
        ("added params", f"{last.mean_added_params:,.0f}"),
        ("seeds kept", f"{last.mean_seeds_kept:.2f}"),
        ("learning rate", f"{last.learning_rate:.2e}"),
        ("time", f"{_duration(spent)}{left}"),
    ):
        table.add_row(name, value)
    return table


# ---------------------------------------------------------------- the app


class WatchApp(App[int]):
    """Polls ``path`` every ``interval`` seconds and shows what it finds."""

    TITLE = "esper watch"
    CSS = """
    #waiting { height: 1fr; content-align: center middle; text-align: center; padding: 1 4; }
    ContentSwitcher { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("p", "pause", "pause/resume"),
        Binding("left", "slot(-1)", "previous slot"),
        Binding("right", "slot(1)", "next slot"),
        Binding("0", "pick(0)", "all slots"),
        *(Binding(str(n), f"pick({n})", f"slot {n}", show=False) for n in range(1, 10)),
    ]

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self.interval = interval
        self.kind: Kind | None = None
        self.files: RunFiles | TrainingFiles | None = None
        self.paused = False
        self.selected: str | None = None
        self.problem = ""

    def compose(self) -> ComposeResult:
        yield Header(icon="")
        with ContentSwitcher(initial="waiting"):
            yield Static(id="waiting")
            yield RunView(id="run")
            yield TrainingView(id="training")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.path)
        self.poll()
        self.set_interval(self.interval, self.poll)

    # ------------------------------------------------------------ reading

    def poll(self) -> None:
        """Read what the run wrote since the last poll (unless paused) and show it."""
        if not self.is_running:  # shutting down: the views may already be gone
            return
        changed = False
        if not self.paused:
            changed = self._read()
        self._show(changed)

    def _read(self) -> bool:
        if self.files is None:
            try:
                self.kind = classify(self.path)
            except NotARunError as error:  # e.g. the directory went away: say so, go on
                self.problem = str(error)
                return False
            self.problem = ""
            if self.kind is Kind.RUN:
                self.files = RunFiles(self.path)
            elif self.kind is Kind.TRAINING:
                self.files = TrainingFiles(self.path)
            else:
                return False
            self.refresh_bindings()  # slot keys only for a run
        return self.files.refresh()

    def _state(self) -> str:
        """Markup for where the run stands: paused, finished, or when it last wrote."""
        files = self.files
        if self.paused:
            return "[bold black on yellow] PAUSED [/] the run goes on; p resumes"
        if files is None:
            return ""
        if files.finished:
            return "[bold green]finished[/]"
        tail = files.history if isinstance(files, RunFiles) else files.updates
        note = "   [yellow]a line is being written[/]" if tail.partial else ""
        if tail.unreadable:
            note += f"   [red]{tail.unreadable} unreadable line(s) skipped[/]"
        what = "epoch" if isinstance(files, RunFiles) else "update"
        return f"[green]live[/]: last {what} written {_ago(tail.modified())}{note}"

    def _show(self, changed: bool) -> None:
        switcher = self.query_one(ContentSwitcher)
        files = self.files
        if isinstance(files, RunFiles) and files.rows:
            view = self.query_one(RunView)
            if self.selected not in files.slot_ids:
                self.selected = None
            if changed or switcher.current != "run":
                switcher.current = "run"
                view.show(files, self.selected, self._state())
            else:
                view.status(files, self._state())
        elif isinstance(files, TrainingFiles) and files.rows:
            training = self.query_one(TrainingView)
            if changed or switcher.current != "training":
                switcher.current = "training"
                training.show(files, self._state())
            else:
                training.status(files, self._state())
        else:
            switcher.current = "waiting"
            self.query_one("#waiting", Static).update(self._waiting())

    def _waiting(self) -> Text:
        files = self.files
        if self.problem:
            message = self.problem
        elif files is None:
            message = (
                f"waiting for {self.path} to be written: it is empty (a run that is starting?)"
            )
        elif isinstance(files, RunFiles):
            who = f"{files.controller} on {files.task}" if files.config else "the run"
            message = (
                f"waiting for the first epoch of {who}: {self.path} has no complete line "
                "in history.jsonl yet (the run is loading its data and building its model, "
                "or has not started)"
            )
        else:
            envs, epochs = files.envs or "?", files.epochs or "?"
            message = (
                f"waiting for the first update of PPO on {files.task}: {self.path} has no "
                f"complete line in updates.jsonl yet (each update first plays {envs} "
                f"episodes of {epochs} epochs)"
            )
        text = Text(message, style="bold")
        if self.paused:
            text.append("\n\n")
            text.append_text(Text.from_markup(self._state()))
        text.append("\n\nq quits", style="grey62")
        return text

    # ------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Slot keys are shown and work only for a run (a training has no slots)."""
        if action in ("slot", "pick"):
            return isinstance(self.files, RunFiles)
        return True

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.poll()

    def action_slot(self, step: int) -> None:
        slots = self._slot_ids()
        if not slots:
            return
        if self.selected in slots:
            index = (slots.index(self.selected) + step) % len(slots)
        else:
            index = 0 if step > 0 else len(slots) - 1
        self._pick(slots[index])

    def action_pick(self, number: int) -> None:
        slots = self._slot_ids()
        if number == 0:
            self._pick(None)
        elif number <= len(slots):
            self._pick(slots[number - 1])

    def _slot_ids(self) -> list[str]:
        return self.files.slot_ids if isinstance(self.files, RunFiles) else []

    def _pick(self, slot: str | None) -> None:
        self.selected = slot
        self._show(changed=True)

    async def action_quit(self) -> None:
        self.exit(0)
