"""The masked categorical: probabilities, entropy and samples respect the mask."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.rl.distributions import MaskedCategorical


@st.composite
def logits_and_mask(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    rows = draw(st.integers(1, 4))
    k = draw(st.integers(1, 6))
    values = draw(st.lists(st.floats(-30, 30), min_size=rows * k, max_size=rows * k))
    legal = draw(st.lists(st.booleans(), min_size=rows * k, max_size=rows * k))
    mask = torch.tensor(legal).reshape(rows, k)
    mask[:, draw(st.integers(0, k - 1))] = True  # every row has a legal entry
    return torch.tensor(values).reshape(rows, k), mask


@settings(max_examples=200, deadline=None)
@given(logits_and_mask())
def test_matches_a_categorical_over_the_legal_entries(case: tuple[torch.Tensor, torch.Tensor]):
    logits, mask = case
    dist = MaskedCategorical(logits, mask)
    for row in range(logits.shape[0]):
        legal = mask[row].nonzero().squeeze(-1)
        reference = torch.distributions.Categorical(logits=logits[row, legal])
        assert torch.all(dist.probs[row][~mask[row]] == 0)
        torch.testing.assert_close(dist.probs[row, legal], reference.probs)
        torch.testing.assert_close(dist.entropy()[row], reference.entropy(), atol=1e-5, rtol=0)
        assert 0 <= dist.entropy()[row] <= math.log(len(legal)) + 1e-5
        assert mask[row, dist.mode()[row]]
    assert bool(mask.gather(-1, dist.sample()[:, None]).all())


def test_one_legal_entry_has_entropy_zero_and_log_prob_zero() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[torch.arange(3), torch.tensor([0, 2, 4])] = True
    dist = MaskedCategorical(logits, mask)
    assert torch.equal(dist.entropy(), torch.zeros(3))
    assert torch.equal(dist.log_prob(torch.tensor([0, 2, 4])), torch.zeros(3))
    (dist.entropy().sum() + dist.log_prob(torch.tensor([0, 2, 4])).sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_extreme_logits_stay_finite() -> None:
    # -inf masking would give 0 * inf = NaN here; the finite mask value does not.
    logits = torch.tensor([[1e6, -1e6, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[False, True, True], [True, False, False]])
    dist = MaskedCategorical(logits, mask)
    loss = dist.entropy().sum() + dist.log_prob(torch.tensor([1, 0])).sum()
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and torch.isfinite(logits.grad).all()


def test_samples_never_pick_an_illegal_entry() -> None:
    logits = torch.tensor([[10.0, 0.0, 1.0]]).expand(2000, 3)
    mask = torch.tensor([[False, True, True]]).expand(2000, 3)
    samples = MaskedCategorical(logits, mask).sample(torch.Generator().manual_seed(0))
    assert set(samples.tolist()) == {1, 2}


def test_a_row_without_a_legal_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="no legal entry"):
        MaskedCategorical(torch.zeros(2, 3), torch.tensor([[True, False, False], [False] * 3]))
