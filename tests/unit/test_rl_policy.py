"""The factored policy: conditional masks, heads that do not apply, state handling."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from esper.rl.distributions import MaskedCategorical
from esper.rl.policy import (
    ActionMasks,
    MLPPolicy,
    RecurrentFactoredPolicy,
    flat_action_mask,
    head_applies,
)
from esper.rl.rollout import RolloutCollector
from tests.rl_envs import (
    CULL,
    FOSSILIZE,
    GERMINATE,
    SPEC,
    WAIT,
    RandomMaskEnv,
    is_legal,
    pool_of,
    random_masks,
)

OBS = 5


def _policy() -> RecurrentFactoredPolicy:
    return RecurrentFactoredPolicy(OBS, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=16)


def _masks(seed: int, *batch: int) -> ActionMasks:
    """Random consistent conditional masks with leading dimensions ``batch``."""
    rng = np.random.default_rng(seed)
    flat = [random_masks(rng, SPEC) for _ in range(int(np.prod(batch)))]
    stacked = {
        k: np.stack([m[k] for m in flat]).reshape(*batch, *flat[0][k].shape) for k in flat[0]
    }
    return ActionMasks.from_numpy(stacked)


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def test_head_applies() -> None:
    applies = head_applies(torch.tensor([WAIT, GERMINATE, FOSSILIZE, CULL]))
    expected = [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert applies.tolist() == expected


def test_wait_steps_send_no_gradient_to_the_other_heads_and_add_nothing() -> None:
    policy = _policy()
    T, B = 6, 4
    obs, starts = torch.randn(T, B, OBS), torch.zeros(T, B)
    masks = _masks(0, T, B)
    masks.op[..., WAIT] = True
    # Placeholders of heads that do not apply are irrelevant: use non-zero ones here.
    actions = torch.tensor([WAIT, 2, 1, 1]).expand(T, B, 4)
    out = policy.evaluate(obs, actions, masks, policy.initial_state(B), starts)
    (out.log_prob.sum() + out.entropy.sum() + out.value.sum()).backward()

    for head in (policy.slot_head, policy.blueprint_head, policy.blend_head):
        assert all(torch.equal(g, torch.zeros_like(g)) for g in _grads(head))
    assert any(g.abs().sum() > 0 for g in _grads(policy.op_head))

    # Log-probability and entropy are the op head's alone.
    h, _ = policy._features(obs, policy.initial_state(B), starts)
    op = MaskedCategorical(policy.op_head(h), masks.op)
    torch.testing.assert_close(out.log_prob, op.log_prob(actions[..., 0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.entropy, op.entropy(), rtol=0, atol=1e-6)


def test_germinate_steps_train_every_head_and_fossilize_steps_op_and_slot() -> None:
    policy = _policy()
    T, B = 3, 2
    obs, starts = torch.randn(T, B, OBS), torch.zeros(T, B)
    masks = ActionMasks.all_legal(SPEC, [T, B])
    for op, trained in ((GERMINATE, 4), (FOSSILIZE, 2)):
        policy.zero_grad()
        actions = torch.tensor([op, 1, 2, 1]).expand(T, B, 4)
        out = policy.evaluate(obs, actions, masks, policy.initial_state(B), starts)
        out.log_prob.sum().backward()
        heads = (policy.op_head, policy.slot_head, policy.blueprint_head, policy.blend_head)
        moved = [any(g.abs().sum() > 0 for g in _grads(head)) for head in heads]
        assert moved == [True] * trained + [False] * (4 - trained)


def test_no_legal_slot_for_a_chosen_op_is_an_error() -> None:
    policy = _policy()
    masks = ActionMasks.all_legal(SPEC, [1])
    masks.slot[0, GERMINATE] = False
    actions = torch.tensor([[[GERMINATE, 0, 0, 0]]])
    with pytest.raises(ValueError, match="no legal slot"):
        policy.evaluate(
            torch.zeros(1, 1, OBS),
            actions,
            masks.index(None),
            policy.initial_state(1),
            torch.zeros(1, 1),
        )


def test_a_stored_action_that_breaks_its_mask_is_an_error() -> None:
    policy = _policy()
    masks = ActionMasks.all_legal(SPEC, [1, 1])
    masks.blueprint[0, 0, 1, 2] = False
    obs, starts = torch.zeros(1, 1, OBS), torch.zeros(1, 1)
    legal = torch.tensor([[[GERMINATE, 1, 1, 0]]])
    policy.evaluate(obs, legal, masks, policy.initial_state(1), starts)
    illegal = torch.tensor([[[GERMINATE, 1, 2, 0]]])
    with pytest.raises(ValueError, match="stored blueprint action is illegal"):
        policy.evaluate(obs, illegal, masks, policy.initial_state(1), starts)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_sampled_actions_obey_the_conditional_masks(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    policy = _policy()
    B = 64
    masks = _masks(seed, B)
    out = policy.act(
        torch.randn(B, OBS), policy.initial_state(B), masks, deterministic=deterministic
    )
    numpy_masks = {k: getattr(masks, k).numpy() for k in ("op", "slot", "blueprint", "blend")}
    for b, action in enumerate(out.action.numpy()):
        assert is_legal(action, {k: v[b] for k, v in numpy_masks.items()})
        applies = head_applies(torch.tensor(action[0])).bool()
        assert all(a == 0 for a, used in zip(action, applies, strict=True) if not used)
    assert out.action.dtype == torch.int64 and out.action.shape == (B, 4)
    assert out.log_prob.shape == out.value.shape == (B,)


def test_evaluate_reproduces_the_rollout_with_masks_and_episode_starts() -> None:
    # Episodes of random length (terminated, or truncated at 6 steps) start inside the
    # 20-step sequences; the masks change every step. Re-running the LSTM over whole
    # sequences from the stored initial state must give the rollout's numbers, for all
    # environments together and for any subset (a minibatch).
    torch.manual_seed(0)
    envs = [RandomMaskEnv(OBS) for _ in range(4)]
    policy = _policy()
    collector = RolloutCollector(pool_of([gym.wrappers.TimeLimit(env, 6) for env in envs]), policy)
    seeds = itertools.count(3)
    for rollout_index in range(3):  # later rollouts start from a carried, non-zero state
        buffer = collector.collect(20, seeds, restart=False).buffer
        assert buffer.starts[1:].sum() > 0 and buffer.truncated.sum() > 0
        assert buffer.masks is not None
        for columns in (torch.arange(4), torch.tensor([1, 3]), torch.tensor([2])):
            out = policy.evaluate(
                buffer.obs[:, columns],
                buffer.actions[:, columns],
                buffer.masks.index((slice(None), columns)),
                tuple(s[:, columns] for s in buffer.initial_state),
                buffer.starts[:, columns],
            )
            torch.testing.assert_close(
                out.log_prob, buffer.log_probs[:, columns], rtol=0, atol=1e-5
            )
            torch.testing.assert_close(out.value, buffer.values[:, columns], rtol=0, atol=1e-5)
        if rollout_index > 0:
            assert buffer.initial_state[0].abs().sum() > 0
    assert [env.illegal_actions for env in envs] == [0, 0, 0, 0]


def test_a_start_resets_the_state() -> None:
    policy = _policy()
    obs = torch.randn(2, OBS)
    fresh = policy.act(obs, policy.initial_state(2), deterministic=True)
    carried = (torch.randn(1, 2, 16), torch.randn(1, 2, 16))
    reset = policy.act(obs, carried, starts=torch.ones(2), deterministic=True)
    kept = policy.act(obs, carried, starts=torch.zeros(2), deterministic=True)
    torch.testing.assert_close(reset.value, fresh.value)
    assert not torch.allclose(kept.value, fresh.value)


def test_initialisation() -> None:
    policy = _policy()
    hidden = 16
    biases = dict(policy.lstm.named_parameters())
    bias = biases["bias_ih_l0"] + biases["bias_hh_l0"]
    torch.testing.assert_close(bias[hidden : 2 * hidden], torch.ones(hidden))
    assert torch.equal(bias[:hidden], torch.zeros(hidden))
    # Orthogonal rows with gain 0.01 on the op logits: a near-uniform first policy.
    weight = policy.op_head.weight
    torch.testing.assert_close(weight @ weight.T, 1e-4 * torch.eye(4), atol=1e-7, rtol=0)
    value = policy.value_head.weight
    torch.testing.assert_close(value @ value.T, torch.ones(1, 1))


def test_mlp_policy_has_no_state_and_takes_no_masks() -> None:
    policy = MLPPolicy(4, 2)
    assert policy.initial_state(3) == () and not policy.is_recurrent
    out = policy.act(torch.randn(3, 4), ())
    assert out.action.shape == (3,) and out.state == ()
    evaluated = policy.evaluate(
        torch.randn(5, 3, 4), torch.zeros(5, 3, dtype=torch.int64), None, (), torch.zeros(5, 3)
    )
    assert evaluated.log_prob.shape == evaluated.entropy.shape == evaluated.value.shape == (5, 3)
    with pytest.raises(ValueError, match="no action masks"):
        policy.act(torch.randn(1, 4), (), ActionMasks.all_legal(SPEC, [1]))


def test_flat_mask_for_maskable_ppo() -> None:
    masks = {
        "op": np.array([True, True, False, True]),
        "slot": np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]], dtype=bool),
        "blueprint": np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=bool),
        "blend": np.array([[False, False], [True, False], [False, False]]),
    }
    expected = [*(1, 1, 0, 1), *(1, 0, 1), *(0, 1, 0), *(1, 0)]  # op, slot, bp, blend
    assert flat_action_mask(masks).tolist() == [bool(x) for x in expected]

    only_wait = {
        "op": np.array([True, False, False, False]),
        "slot": np.zeros((4, 3), dtype=bool),
        "blueprint": np.zeros((3, 3), dtype=bool),
        "blend": np.ones((3, 2), dtype=bool),
    }
    # No slot or blueprint is legal: those heads' choices are irrelevant, all allowed.
    assert flat_action_mask(only_wait).tolist() == [True] + [False] * 3 + [True] * 8
    batched = {k: np.stack([v, only_wait[k]]) for k, v in masks.items()}
    assert flat_action_mask(batched).shape == (2, 12)


def test_masks_check_their_shapes() -> None:
    ActionMasks.all_legal(SPEC, [2]).check(SPEC)
    wrong = ActionMasks.all_legal(SPEC, [2])
    bad = ActionMasks(wrong.op, wrong.slot[..., :2], wrong.blueprint, wrong.blend)
    with pytest.raises(ValueError, match="slot"):
        bad.check(SPEC)
    with pytest.raises(ValueError, match="lacks blend"):
        ActionMasks.from_numpy(
            {"op": np.ones(4), "slot": np.ones((4, 3)), "blueprint": np.ones((3, 3))}
        )
