"""Data sets for Esper: every loader returns a `SplitData` (train and validation splits).

Image classification: `load_digits` (offline default), `load_cifar10`, `load_fashion_mnist`;
character-level language modelling: `load_text_file`, `load_shakespeare`, `load_tinystories`.
Nothing is ever downloaded implicitly or replaced by synthetic data: missing data raises
`DataUnavailableError` with what was looked for and how to provide it; malformed data
raises `DataFormatError`.
"""

from esper.data.arrays import (
    AugmentedImages,
    DataFormatError,
    DataUnavailableError,
    SplitData,
    random_crop_flip,
)
from esper.data.images import load_cifar10, load_digits, load_fashion_mnist, read_idx
from esper.data.text import (
    CharVocab,
    TokenBlocks,
    load_shakespeare,
    load_text_file,
    load_tinystories,
)

__all__ = [
    "AugmentedImages",
    "CharVocab",
    "DataFormatError",
    "DataUnavailableError",
    "SplitData",
    "TokenBlocks",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_shakespeare",
    "load_text_file",
    "load_tinystories",
    "random_crop_flip",
    "read_idx",
]
