"""The post-training objectives against hand-computed examples: Bradley–Terry, DPO's logit, GAE, the KL penalty,
PPO's clipping of the policy ratio and of the value; the RBRM's class probabilities, its classifier and grader
backends, and the weight fit that repairs a bad rubric."""
import json
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


# ----------------------------------------------------------------------------- RBRMs

def test_rbrm_class_probabilities_follow_the_rubric():
    from nanogpt4.posttrain import rbrm
    rub = rbrm.rubric()
    props = dict(refuses=[1.0, 1.0, 0.0, 0.5, 1.0], apologises=[1.0, 0.0, 0.0, 1.0, 1.0],
                 states_inability=[1.0, 1.0, 0.0, 1.0, 0.0], judgemental=[0.0, 0.0, 0.0, 0.0, 0.0],
                 rambles=[0.0] * 5,
                 contains_disallowed_content=[0.0, 0.0, 0.0, 0.2, 0.0])
    p = rbrm.class_probs(rub, props)
    assert p[0].tolist() == [1, 0, 0, 0] and p[1].tolist() == [0, 1, 0, 0] and p[2].tolist() == [0, 0, 0, 1]
    # refuses 0.5, apologises 1, disallowed 0.2: a = 0.5·0.8, b = 0 (it always apologises), c = 0.2, d = 0.5·0.8
    assert p[3].tolist() == pytest.approx([0.4, 0.0, 0.2, 0.4])
    # "Sorry." and nothing else: it declines and apologises but never says it cannot help, so it is not the
    # desired style (the terse answer a PPO policy found when it was, NOTES.md 2026-12-06)
    assert p[4].tolist() == [0, 1, 0, 0]
    assert p.sum(1).tolist() == pytest.approx([1.0] * 5)


def test_rbrm_classifier_grader_and_weights():
    from nanogpt4.posttrain import rbrm
    refuse = ["I'm sorry, but I can't help with that.", "Sorry, I can't assist with this request.",
              "I'm afraid I can't help with that."]
    preach = ["You should be ashamed to ask. I won't.", "That is wrong and I will not do it."]
    helpful = ["Water the plant twice a week and keep it in light.", "Preheat the oven, then bake for 20 minutes.",
               "Use a strong password and turn on two-factor login."]
    rows = []
    for i in range(12):
        for style, texts, refuses, apol, judg in (("desired", refuse, 1, 1, 0), ("preachy", preach, 1, 0, 1),
                                                  ("helpful", helpful, 0, 0, 0)):
            cls = "ab"[judg] if refuses else "d"  # the rubric's class: desired a, preachy b, helpful d
            for cat in ("disallowed", "allowed"):
                rows.append(dict(prompt=f"request {i} {cat}", completion=texts[i % len(texts)], style=style,
                                 category=cat, refuses=refuses, split="train", **{"class": cls},
                                 labels=dict(refuses=bool(refuses), apologises=bool(apol), judgemental=bool(judg),
                                             states_inability=bool(refuses), rambles=False)))
    clf = rbrm.Classifier(rows)
    measured = rbrm.evaluate(clf, rows)
    assert measured["accuracy"] == 1.0 and measured["undecided"] == 0
    assert json.loads(json.dumps(measured)) == measured  # plain numbers: it goes into rbrm.json
    rub = rbrm.rubric()
    probs = rbrm.class_probs(rub, clf.propositions([r["prompt"] for r in rows], [r["completion"] for r in rows]))
    assert rbrm.class_accuracy(rub, probs, rows) == {"desired": 1.0, "helpful": 1.0, "preachy": 1.0}
    flipped = [dict(r, **{"class": "b"}) if r["style"] == "desired" else r for r in rows]
    assert rbrm.class_accuracy(rub, probs, flipped)["desired"] == 0.0
    pairs = rbrm.ranked_pairs(rows)
    assert len(pairs) == 12 * (3 + 3)  # disallowed: desired > preachy > helpful; allowed: helpful > desired > preachy
    start = {c: torch.tensor([rub["rewards"][c][k] for k in rub["classes"]]) for c in rbrm.RANK}
    start["disallowed"] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # a bad starting rubric: prefers undesired refusals
    before = rbrm.ranking_accuracy(start, probs, pairs)
    rub["rewards"]["disallowed"] = dict(zip(rub["classes"], start["disallowed"].tolist()))
    after = rbrm.ranking_accuracy(rbrm.fit_weights(rub, probs, pairs), probs, pairs)
    assert before < 0.8 and after == 1.0, (before, after)
    # on top of a reward model that likes refusals everywhere (+3 for a refusal, whatever the request), the RM alone
    # and the RM + rubric misrank the allowed requests; weights fitted on the total reward RM + RBRM correct it
    rub = rbrm.rubric()
    start = {c: torch.tensor([rub["rewards"][c][k] for k in rub["classes"]]) for c in rbrm.RANK}
    likes_refusals = torch.tensor([3.0 * r["refuses"] for r in rows])
    assert rbrm.ranking_accuracy(None, probs, pairs, likes_refusals) < 0.6
    assert rbrm.ranking_accuracy(start, probs, pairs, likes_refusals) < 0.8
    fitted = rbrm.fit_weights(rub, probs, pairs, offset=likes_refusals)
    assert rbrm.ranking_accuracy(fitted, probs, pairs, likes_refusals) == 1.0

    class Fake:  # a zero-shot grader's completion function
        def __call__(self, prompt, **kw):
            text = prompt[0]["content"].split("Completion: ")[1]
            ans = "refuses: yes\napologises: yes" if "sorry" in text.lower() else "refuses: no\nhelpful: yes"
            return type("R", (), {"completions": [ans]})()
    grader = rbrm.Grader(Fake(), rub)
    got = grader.propositions(["q", "q"], ["Sorry, no.", "Here is how."])
    assert got["refuses"] == [1.0, 0.0] and got["judgemental"] == [0.5, 0.5]  # not answered: 0.5
    assert rbrm.evaluate(grader, rows)["undecided"] == 0

    class Babbles:  # a grader that never answers in the format
        def __call__(self, prompt, **kw):
            return type("R", (), {"completions": ["The weather is nice today."]})()
    babble = rbrm.evaluate(rbrm.Grader(Babbles(), rub), rows)
    assert babble["undecided"] == len(rows) and babble["accuracy"] == 1 / 3  # all counted as non-refusals


def test_rbrm_build_names_propositions_its_labels_lack(tmp_path):
    from nanogpt4.common import UserError
    from nanogpt4.posttrain import rbrm
    row = dict(prompt="q", completion="Sorry.", split="train", labels=dict(refuses=True, apologises=True))
    (tmp_path / "refusal_labels.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"\['judgemental', 'rambles', 'states_inability'\]"):
        rbrm.build(tmp_path, tmp_path)
