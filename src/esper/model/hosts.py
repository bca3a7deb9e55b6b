"""Host networks: plain backbones cut into segments at their injection points.

A host never applies slots itself. It exposes ``num_segments`` segments; segment ``i``
runs from the previous injection point (or the input) up to injection point ``i``, and
``forward_head`` runs from the last point to the logits. `MorphogeneticModel` threads
the slots in between. ``forward(x)`` is the plain backbone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.contracts import Topology, slot_id
from esper.model.width import Consumer, GlobalMean, WidthPoint
from esper.registry import Registry

__all__ = [
    "HOSTS",
    "CNNHost",
    "Host",
    "InjectionPoint",
    "TransformerHost",
    "build_host",
]


@dataclass(frozen=True)
class InjectionPoint:
    """Where a slot can sit: its id, the feature width there, and relative depth (0, 1]."""

    slot_id: str
    channels: int
    position: float


class Host(nn.Module):
    """Base class of hosts. Subclasses set ``topology`` and implement the segment API."""

    topology: Topology

    def injection_points(self) -> list[InjectionPoint]:
        raise NotImplementedError

    def width_points(self) -> list[WidthPoint]:
        """The layers width seeds can grow, one per slot at most (none by default): the
        layer before the slot, as `esper.model.width` describes."""
        return []

    @property
    def num_segments(self) -> int:
        return len(self.injection_points())

    def forward_segment(self, index: int, h: Tensor) -> Tensor:
        """Run segment ``index``; segment 0 takes the network input."""
        raise NotImplementedError

    def forward_head(self, h: Tensor) -> Tensor:
        """From the last injection point to the logits."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for index in range(self.num_segments):
            h = self.forward_segment(index, h)
        return self.forward_head(h)


HOSTS: Registry[Callable[..., Host]] = Registry("host")


def build_host(name: str, **kwargs: Any) -> Host:
    """Build a registered host; unknown names list the valid ones."""
    return HOSTS.get(name)(**kwargs)


class CNNHost(Host):
    """conv3x3 -> BatchNorm -> ReLU (-> MaxPool 2) blocks, then global pool and a linear head.

    One injection point after each block (after its pooling). Deliberately small by
    default, to leave headroom that seeds can fill.
    """

    topology = Topology.CNN

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (8, 16, 32),
        num_classes: int = 10,
        pooled_blocks: int | None = None,
    ) -> None:
        super().__init__()
        if len(widths) < 1 or any(w < 1 for w in widths):
            raise ValueError(f"CNNHost widths must be positive, got {list(widths)}")
        pooled = len(widths) if pooled_blocks is None else pooled_blocks
        blocks: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            if index < pooled:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            previous = width
        self.in_channels = in_channels
        self.widths = tuple(widths)
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(previous, num_classes)

    def injection_points(self) -> list[InjectionPoint]:
        n = len(self.widths)
        return [InjectionPoint(slot_id(0, i), w, (i + 1) / n) for i, w in enumerate(self.widths)]

    def width_points(self) -> list[WidthPoint]:
        """Every block's channels: its conv and BatchNorm grow, and the next block's conv
        (the classifier, after the last block) reads the new channels."""
        points, last = [], len(self.widths) - 1
        for index, block in enumerate(self.blocks):
            assert isinstance(block, nn.Sequential)
            after = list(block)[2:]  # ReLU (and the pool) after the norm
            path = _path_after(after, head=index == last)
            consumer = "classifier" if index == last else f"blocks.{index + 1}.0"
            points.append(
                WidthPoint(
                    slot_id(0, index),
                    producer=f"blocks.{index}.0",
                    norm=f"blocks.{index}.1",
                    consumers=(Consumer(consumer, path),),
                    segment=index + 1,
                )
            )
        return points

    def forward_segment(self, index: int, h: Tensor) -> Tensor:
        return self.blocks[index](h)  # type: ignore[no-any-return]

    def forward_head(self, h: Tensor) -> Tensor:  # [B, C, H, W] -> [B, classes]
        return self.classifier(h.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def _path_after(modules: Sequence[nn.Module], head: bool) -> Callable[[], nn.Module]:
    """A builder of fresh copies of the parameter-free ``modules`` (ReLU, pooling), and
    of the head's mean when the consumer is the classifier."""
    template = nn.Sequential(*copy.deepcopy(list(modules)), *([GlobalMean()] if head else []))
    return lambda: copy.deepcopy(template)


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4x GELU MLP."""

    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, C]
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        x = x + self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.mlp(self.ln2(x))  # type: ignore[no-any-return]


class TransformerHost(Host):
    """GPT-style character/token language model with a weight-tied output head.

    Injection points sit after every ``layers_per_segment`` blocks; the last one is
    just before the final LayerNorm. Input ``[B, T]`` token ids, output ``[B, T, vocab]``.
    """

    topology = Topology.TRANSFORMER

    def __init__(
        self,
        vocab_size: int = 96,
        d_model: int = 64,
        n_layer: int = 3,
        n_head: int = 4,
        block_size: int = 64,
        dropout: float = 0.0,
        layers_per_segment: int = 1,
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} must be divisible by n_head {n_head}")
        if n_layer % layers_per_segment:
            raise ValueError(
                f"n_layer {n_layer} must be divisible by layers_per_segment {layers_per_segment}"
            )
        self.d_model = d_model
        self.block_size = block_size
        self.layers_per_segment = layers_per_segment
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one matrix, counted once
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def injection_points(self) -> list[InjectionPoint]:
        n = len(self.layers) // self.layers_per_segment
        return [InjectionPoint(slot_id(0, i), self.d_model, (i + 1) / n) for i in range(n)]

    def width_points(self) -> list[WidthPoint]:
        """The MLP hidden layer of the last block before each slot: its first linear grows
        (no per-unit norm), and its output projection reads the new units after GELU."""
        points = []
        for index in range(len(self.layers) // self.layers_per_segment):
            layer = (index + 1) * self.layers_per_segment - 1
            mlp = f"layers.{layer}.mlp"
            points.append(
                WidthPoint(
                    slot_id(0, index),
                    producer=f"{mlp}.0",
                    norm=None,
                    consumers=(Consumer(f"{mlp}.2", _path_after([nn.GELU()], False)),),
                    segment=index,
                )
            )
        return points

    def forward_segment(self, index: int, h: Tensor) -> Tensor:
        if index == 0:
            t = h.shape[1]
            if t > self.block_size:
                raise ValueError(
                    f"sequence length {t} exceeds the host's block_size {self.block_size}"
                )
            positions = torch.arange(t, device=h.device)
            h = self.drop(self.tok_emb(h) + self.pos_emb(positions))
        start = index * self.layers_per_segment
        for layer in self.layers[start : start + self.layers_per_segment]:
            h = layer(h)
        return h

    def forward_head(self, h: Tensor) -> Tensor:
        return self.lm_head(self.ln_f(h))  # type: ignore[no-any-return]


@HOSTS.register("cnn")
def _cnn(**kwargs: Any) -> Host:
    """32x32 RGB images (CIFAR-10): widths 8/16/32, pooled after every block."""
    return CNNHost(**{"in_channels": 3, "widths": (8, 16, 32), **kwargs})


@HOSTS.register("cnn_digits")
def _cnn_digits(**kwargs: Any) -> Host:
    """8x8 greyscale digits: widths 8/16/32, pooled after the first two blocks (8->4->2)."""
    return CNNHost(**{"in_channels": 1, "widths": (8, 16, 32), "pooled_blocks": 2, **kwargs})


@HOSTS.register("cnn_28")
def _cnn_28(**kwargs: Any) -> Host:
    """28x28 greyscale images (Fashion-MNIST): widths 8/16/32, pooled after every block."""
    return CNNHost(**{"in_channels": 1, "widths": (8, 16, 32), **kwargs})


@HOSTS.register("transformer")
def _transformer(**kwargs: Any) -> Host:
    """Small GPT-style language model; one injection point after each block."""
    return TransformerHost(**kwargs)
