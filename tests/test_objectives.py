"""The post-training objectives against hand-computed examples: Bradley–Terry, DPO's logit, GAE, the KL penalty,
PPO's clipping of the policy ratio and of the value."""
import math

import pytest
import torch

from nanogpt4.posttrain import objectives as O


def test_token_and_sequence_logprobs():
    logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens
    logits[0, 1, 2] = math.log(3.0)  # position 1: token 2 has probability 3/6
    lp = O.token_logprobs(logits, torch.tensor([[1, 2]]))
    assert lp[0].tolist() == pytest.approx([math.log(0.25), math.log(0.5)])
    assert O.sequence_logprob(lp, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(math.log(0.5))


def test_bradley_terry():
    loss, acc = O.bradley_terry_loss(torch.tensor([2.0, -1.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2)
    assert acc.item() == 0.5


def test_dpo_logit():
    # β·[(π_c − ref_c) − (π_r − ref_r)] = 0.5·[(−1 + 1.5) − (−2 + 1.5)] = 0.5 → loss log(1 + e^−0.5)
    loss, chosen, rejected = O.dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                        torch.tensor([-1.5]), beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)))
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)
    same, _, _ = O.dpo_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), torch.tensor([-3.0]), torch.tensor([-3.0]))
    assert same.item() == pytest.approx(math.log(2))  # the policy is the reference: σ(0)


def test_gae_hand_computed():
    r, v = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = O.gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.5, 0.5]) and ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # λ = 0.5: δ = (0, 0, 0.5) → A₂ = 0.5, A₁ = 0.25, A₀ = 0.125
    adv, _ = O.gae(r, v, torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.125, 0.25, 0.5])
    # the episode ends after the last masked token: the value beyond it (9) is ignored
    adv, ret = O.gae(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.2, 0.4, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]]),
                     gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.8, 0.6, 0.0]) and ret[0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    # γ = 0.5 with λ = 1: A₀ = 0 + 0.5·0.4 − 0.2 + 0.5·(1 − 0.4) = 0.3
    adv, _ = O.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.4]]), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.3, 0.6])


def test_kl_penalty_and_whiten():
    assert O.kl_penalty(torch.tensor([-1.0]), torch.tensor([-3.0])).item() == 2.0
    w = O.whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert w[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_ppo_clipping():
    mask = torch.ones(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    # ratio 1.5, A=+1 → clipped to 1.2; A=−1 → −1.5; ratio 0.5, A=+1 → 0.5; A=−1 → clipped to −0.8
    policy, _, clipfrac = O.ppo_losses(logp, torch.zeros(1, 4), adv, torch.zeros(1, 4), torch.zeros(1, 4),
                                       torch.zeros(1, 4), mask, clip=0.2)
    assert policy.item() == pytest.approx(-(1.2 - 1.5 + 0.5 - 0.8) / 4)
    assert clipfrac.item() == 1.0
    # value 1.0 from an old 0.5 with return 0: the clipped value 0.7 has the smaller error, PPO takes the larger
    _, value, _ = O.ppo_losses(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([[1.0]]),
                               torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.ones(1, 1), value_clip=0.2)
    assert value.item() == pytest.approx(0.5)
    _, value, _ = O.ppo_losses(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([[0.6]]),
                               torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.ones(1, 1), value_clip=0.2)
    assert value.item() == pytest.approx(0.5 * 0.4 ** 2)  # within the clip range: the plain squared error
