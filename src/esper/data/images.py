"""Image classification data sets: sklearn digits (offline default), CIFAR-10, Fashion-MNIST.

Nothing is downloaded. CIFAR-10 and Fashion-MNIST are read in their standard formats from
a directory the user gives; when they are not there the loaders raise
`DataUnavailableError` saying what was looked for, where to get it and how to pass it.
Malformed files raise `DataFormatError`. Images come back as float32 ``[N, C, H, W]``
tensors normalised with the per-channel mean and std of what the model trains on.

Every loader gives three splits (`SplitData`): ``train``; ``val``, the decision split, a
stratified ``decision_fraction`` held out of the training data (the same for every
run); and ``test``, the official test split for CIFAR-10 and Fashion-MNIST, read only by
the final report.
"""

from __future__ import annotations

import _codecs
import contextlib
import fcntl
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from esper.data.arrays import DataFormatError, DataUnavailableError, SplitData, image_split

__all__ = [
    "CACHE_LOCK",
    "CACHE_NAME",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SYSTEM_DIR",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "read_idx",
]

PathLike = str | os.PathLike[str]
U8 = NDArray[np.uint8]
I64 = NDArray[np.int64]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Where Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Decoded image-folder trees are cached under this name in the tree's root.
CACHE_NAME = ".esper-cache.npz"
#: Held (flock) while a tree is decoded, so that runs starting together decode it once.
CACHE_LOCK = ".esper-cache.lock"

_CACHE_VERSION = "esper-image-folder-v1"
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_CIFAR_PICKLES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_digits(
    test_fraction: float = 0.2, decision_fraction: float | None = None, seed: int = 0
) -> SplitData:
    """sklearn's 8x8 handwritten digits (1,797 images, 10 classes); needs no download.

    ``test_fraction`` of the images (360) are the test split, ``decision_fraction``
    (default 0.2) of the rest (287) the decision split, and the model trains on the
    remaining 1,150. Both cuts are stratified by class and depend only on the fractions
    and ``seed``, never on global random state. Pixels (0..16) are normalised with the
    training images' mean and std; ``input_shape`` is ``(1, 8, 8)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    # Imported here, for start-up time only: scikit-learn (with scipy) takes about a
    # second to import, and only this data set needs it.
    from sklearn.datasets import load_digits as _sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = _sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(labels.shape[0]), test_size=test_fraction, stratify=labels, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    names = tuple(str(t) for t in bunch.target_names)
    return image_split(
        "digits",
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        names,
        scale=16.0,
        decision_fraction=0.2 if decision_fraction is None else decision_fraction,
    )


def load_cifar10(data_dir: PathLike | None, decision_fraction: float | None = None) -> SplitData:
    """CIFAR-10 (32x32 RGB, 10 classes) from ``data_dir``: ``decision_fraction`` of the
    training images (default `DECISION_FRACTION`) are the decision split, the official
    test batch is the test split.

    Accepts the python-pickle distribution (``cifar-10-batches-py/`` with
    ``data_batch_1..5``, ``test_batch``, ``batches.meta``) at ``data_dir`` or
    ``data_dir/cifar-10-batches-py``, or an image-folder tree (``train/<class>/*.jpg|png``
    and ``test/<class>/*.jpg|png``, label index = position of the class in sorted order)
    at ``data_dir`` or ``data_dir/cifar10``. A decoded tree is cached in
    ``<tree>/.esper-cache.npz`` when the directory is writable; the cache is keyed on
    every image's path, size and mtime, so a changed tree is decoded again. The pickles
    are read with a restricted unpickler that builds numpy arrays, lists, dicts, bytes,
    strings and numbers and nothing else, so a crafted file cannot run code.
    """
    tried: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for candidate in (root, root / "cifar-10-batches-py"):
            tried.append(candidate)
            if any((candidate / name).is_file() for name in _CIFAR_PICKLES):
                return _cifar_from_pickles(candidate, decision_fraction)
        for candidate in (root, root / "cifar10"):
            tried.append(candidate)
            if (candidate / "train").is_dir() and (candidate / "test").is_dir():
                arrays = _read_image_folder(candidate, (32, 32), num_classes=10)
                return image_split("cifar10", *arrays, decision_fraction=decision_fraction)
    where = ", ".join(str(p) for p in dict.fromkeys(tried)) or "nowhere (no data directory given)"
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        where += f" ({Path(data_dir).expanduser()} is not a directory)"
    raise DataUnavailableError(
        "CIFAR-10 not found. Looked for the python-pickle distribution "
        "(cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta) or an "
        f"image-folder tree (train/<class>/*.jpg|png, test/<class>/*.jpg|png) in: {where}. "
        "Get cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
        "extract it, then pass --data-dir DIR (load_cifar10(DIR) in Python) with DIR the "
        "folder that holds cifar-10-batches-py/ or the train/ and test/ folders."
    )


def load_fashion_mnist(
    data_dir: PathLike | None = None, decision_fraction: float | None = None
) -> SplitData:
    """Fashion-MNIST (28x28 grey, 10 classes) from its four IDX files, gzipped or raw.

    Looks in ``data_dir``, ``data_dir/fashion-mnist`` and ``data_dir/FashionMNIST/raw``;
    with no ``data_dir``, in `FASHION_MNIST_SYSTEM_DIR` (Debian's
    ``dataset-fashion-mnist`` package). ``decision_fraction`` of the training images
    (default `DECISION_FRACTION`) are the decision split, the t10k files the test split.
    """
    if data_dir is None:
        candidates = [FASHION_MNIST_SYSTEM_DIR]
    else:
        root = Path(data_dir).expanduser()
        candidates = [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    for directory in candidates:
        paths = [_find_idx(directory, stem) for stem in _FASHION_FILES]
        if all(p is not None for p in paths):
            train_x, train_y, test_x, test_y = (p for p in paths if p is not None)
            train_images, train_labels = _idx_pair(train_x, train_y)
            test_images, test_labels = _idx_pair(test_x, test_y)
            return image_split(
                "fashion_mnist",
                train_images,
                train_labels,
                test_images,
                test_labels,
                FASHION_MNIST_CLASSES,
                decision_fraction=decision_fraction,
            )
    where = ", ".join(str(c) for c in candidates)
    if not candidates[0].is_dir():
        where += f" ({candidates[0]} is not a directory)"
    raise DataUnavailableError(
        f"Fashion-MNIST not found. Looked for {', '.join(_FASHION_FILES)} (each raw or .gz) "
        f"in: {where}. Install them with "
        "'apt-get install dataset-fashion-mnist' (Debian/Ubuntu, puts them in "
        f"{FASHION_MNIST_SYSTEM_DIR}) or download them from "
        "https://github.com/zalandoresearch/fashion-mnist, then pass --data-dir DIR "
        "(load_fashion_mnist(DIR) in Python)."
    )


def read_idx(path: PathLike) -> U8:
    """The unsigned-byte array stored in an IDX file (gzipped or raw, detected by content).

    Raises `DataFormatError` for a bad magic number, a non-ubyte type or a size that does
    not match the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataFormatError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataFormatError(f"{path}: not an IDX file (magic number 0x{raw[:4].hex()})")
    if raw[2] != 0x08:
        raise DataFormatError(f"{path}: IDX data type 0x{raw[2]:02x}; only 0x08 (ubyte) is read")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise DataFormatError(
            f"{path}: IDX header says shape {dims} ({math.prod(dims)} bytes) but the file "
            f"holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[U8, I64]:
    """Fashion-MNIST images ``[N, 1, 28, 28]`` and labels ``[N]`` with checked shapes."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataFormatError(
            f"{images_path}: expected 28x28 images (IDX magic 0x00000803, shape [N, 28, 28]), "
            f"got shape {list(images.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            f"{labels_path}: expected {images.shape[0]} labels (IDX magic 0x00000801, shape "
            f"[N]) to match {images_path.name}, got shape {list(labels.shape)}"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataFormatError(f"{labels_path}: label {int(labels.max())} is not in 0..9")
    return images[:, None, :, :], labels.astype(np.int64)


def _cifar_from_pickles(directory: Path, decision_fraction: float | None) -> SplitData:
    missing = [name for name in _CIFAR_PICKLES if not (directory / name).is_file()]
    if missing:
        raise DataUnavailableError(
            f"CIFAR-10 pickle distribution in {directory} is incomplete: missing "
            f"{', '.join(missing)}. Extract cifar-10-python.tar.gz again "
            "(https://www.cs.toronto.edu/~kriz/cifar.html) and pass --data-dir DIR."
        )
    train = [_read_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = _read_cifar_batch(directory / "test_batch")
    meta = _unpickle(directory / "batches.meta")
    names = tuple(
        n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, "label_names")
    )
    if len(names) != len(CIFAR10_CLASSES):
        raise DataFormatError(f"{directory / 'batches.meta'}: expected 10 label names: {names}")
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    for labels in (train_labels, test_labels):
        if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < len(names):
            raise DataFormatError(f"{directory}: CIFAR-10 labels outside 0..9")
    return image_split(
        "cifar10",
        train_images,
        train_labels,
        test_images,
        test_labels,
        names,
        decision_fraction=decision_fraction,
    )


# Everything a CIFAR-10 pickle (Python 2's cPickle or any Python 3 protocol, numpy 1 or
# 2) needs to rebuild its arrays: the array and dtype constructors, and the latin-1
# encoder protocol 2 uses for bytes. Any other global (os.system, builtins.eval, ...)
# is refused before it is looked up.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy(._core|.core).multiarray._reconstruct
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy(._core|.core).numeric._frombuffer
_SCALAR = np.float64(0).__reduce__()[0]  # numpy(._core|.core).multiarray.scalar
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
    **{
        (f"{core}.{module}", name): function
        for core in ("numpy.core", "numpy._core")
        for module, name, function in (
            ("multiarray", "_reconstruct", _RECONSTRUCT),
            ("numeric", "_frombuffer", _FROMBUFFER),
            ("multiarray", "scalar", _SCALAR),
        )
    },
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, bytes, strings and numbers; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 pickle holds only arrays, "
                "lists, dicts and bytes"
            ) from None


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        data = path.read_bytes()
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means the file is not a CIFAR batch
        raise DataFormatError(f"{path}: not a CIFAR-10 python pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    if any(isinstance(v, np.ndarray) and v.dtype.hasobject for v in obj.values()):
        raise DataFormatError(f"{path}: holds an array of Python objects, not of numbers")
    return obj


def _field(batch: dict[Any, Any], key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataFormatError(f"CIFAR-10 pickle has no {key!r} entry (keys: {list(batch)[:8]})")


def _read_cifar_batch(path: Path) -> tuple[U8, I64]:
    batch = _unpickle(path)
    data = np.asarray(_field(batch, "data"), dtype=np.uint8)
    labels = np.asarray(_field(batch, "labels"), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataFormatError(
            f"{path}: expected data [N, 3072] and N labels, got data {list(data.shape)} "
            f"and labels {list(labels.shape)}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _list_split(directory: Path) -> dict[str, list[os.DirEntry[str]]]:
    """Class name -> image files (sorted by name) under ``directory/<class>/``."""
    classes: dict[str, list[os.DirEntry[str]]] = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = [
                f
                for f in os.scandir(entry.path)
                if os.path.splitext(f.name)[1].lower() in _IMAGE_SUFFIXES and f.is_file()
            ]
            classes[entry.name] = sorted(files, key=lambda f: f.name)
    return classes


def _read_image_folder(
    root: Path, size: tuple[int, int], num_classes: int
) -> tuple[U8, I64, U8, I64, tuple[str, ...]]:
    """Decode ``root/{train,test}/<class>/*`` to uint8 ``[N, 3, H, W]`` plus labels; the
    tree must hold ``num_classes`` class folders, the same in both splits, none empty."""
    splits = {split: _list_split(root / split) for split in ("train", "test")}
    names = tuple(splits["train"])
    if not names or set(splits["test"]) != set(names):
        raise DataFormatError(
            f"{root}: train/ and test/ must hold the same non-empty set of class folders; "
            f"train has {sorted(names)}, test has {sorted(splits['test'])}"
        )
    if len(names) != num_classes:
        raise DataFormatError(
            f"{root}: the data set has {num_classes} classes, but train/ and test/ hold "
            f"{len(names)} class folders ({', '.join(names)}); point --data-dir at the "
            "complete tree"
        )
    empty = [
        f"{split}/{name}" for split, found in splits.items() for name in found if not found[name]
    ]
    if empty:
        raise DataFormatError(
            f"{root}: class folder(s) {', '.join(empty)} hold no image (.jpg, .jpeg, .png); "
            "every class needs images in both splits"
        )
    digest = hashlib.sha256(f"{_CACHE_VERSION} {size}\n".encode())
    for split, classes in splits.items():
        for name, files in classes.items():
            for f in files:
                stat = f.stat()
                digest.update(
                    f"{split}/{name}/{f.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode()
                )
    key = digest.hexdigest()
    cache = root / CACHE_NAME
    arrays = _read_cache(cache, key)
    if arrays is None:
        with _decoding(root):
            arrays = _read_cache(cache, key)  # decoded by another process while we waited?
            if arrays is None:
                arrays = {}
                for split, classes in splits.items():
                    images, labels = _decode_split(classes, names, size)
                    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
                _write_cache(cache, key, arrays)
    return (
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
        names,
    )


@contextlib.contextmanager
def _decoding(root: Path) -> Iterator[None]:
    """Hold the tree's decode lock: many runs starting at once on one machine (a compare,
    a node of a cluster) decode the tree once, the others wait and read the cache. A
    tree where the lock cannot be created (read-only) is decoded without it."""
    try:
        fd = os.open(root / CACHE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _decode_split(
    classes: dict[str, list[os.DirEntry[str]]], names: tuple[str, ...], size: tuple[int, int]
) -> tuple[U8, I64]:
    files = [(f.path, label) for label, name in enumerate(names) for f in classes[name]]
    width, height = size
    images = np.empty((len(files), height, width, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                if image.size != size:
                    raise DataFormatError(f"{path}: image is {image.size}, expected {size}")
                images[i] = np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise DataFormatError(f"{path}: cannot decode image ({exc})") from exc
    labels = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


def _read_cache(path: Path, key: str) -> dict[str, NDArray[Any]] | None:
    try:
        with np.load(path, allow_pickle=False) as cached:
            names = ("train_images", "train_labels", "test_images", "test_labels")
            if str(cached["key"]) != key or not set(names) <= set(cached.files):
                return None
            return {name: cached[name] for name in names}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _write_cache(path: Path, key: str, arrays: dict[str, NDArray[Any]]) -> None:
    """Best effort: an unwritable tree is simply decoded again next time."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            np.savez(
                handle,
                allow_pickle=False,
                key=np.array(key),
                train_images=arrays["train_images"],
                train_labels=arrays["train_labels"],
                test_images=arrays["test_images"],
                test_labels=arrays["test_labels"],
            )
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
