"""Post-training on a tiny model: SFT's loss is on assistant tokens only, it lowers held-out loss on a learnable
task, a killed run resumes to the same weights, a run directory refuses other settings; the reward model and DPO
learn generated preferences well above chance on held-out prompts."""
import json
import random
import shutil

import pytest
from safetensors.torch import load_file

from nanogpt4 import chat
from nanogpt4.common import UserError
from nanogpt4.posttrain import sft
from nanogpt4.posttrain.data import make_pairs
from nanogpt4.tokenizer import Tokenizer

WORDS = ["cat", "dog", "moon", "sea", "bird", "road", "song", "bread", "king", "river"]


def conversations(path, n=240, seed=0):
    """Echo tasks: the answer repeats the user's words, a thing a tiny model learns in a few hundred steps. Every
    fifth conversation is held out; one is too long for the context."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(3))
            msgs = [{"role": "system", "content": "Repeat."}, {"role": "user", "content": words},
                    {"role": "assistant", "content": words}]
            f.write(json.dumps({"messages": msgs, "split": "heldout" if i % 5 == 0 else "train"}) + "\n")
        long = [{"role": "user", "content": "the sea " * 80}, {"role": "assistant", "content": "ok"}]
        f.write(json.dumps({"messages": long, "split": "train"}) + "\n")
    return path


def test_loss_mask_covers_assistant_tokens_only(local_run):
    tok = Tokenizer.load(local_run / "tokenizer.json")
    msgs = [{"role": "user", "content": "cat dog"}, {"role": "assistant", "content": "cat dog"}]
    r = chat.render(tok, msgs, generate=False)
    x, y, m = sft.padded([(r.ids, r.mask), (r.ids[:-2], r.mask[:-2])], tok.eot_id)
    assert m[0].tolist() == r.mask[1:] and y[0].tolist() == r.ids[1:]
    assert m[1, -2:].tolist() == [0, 0]  # padding is never trained on
    answer = [t for t, k in zip(r.ids, r.mask) if k]
    assert answer == tok.encode("cat dog") + [tok.special("end")]


def test_sft_learns_resumes_exactly_and_guards_its_run(local_run, tmp_path):
    data = conversations(tmp_path / "sft.jsonl")
    out = tmp_path / "sft"
    kw = dict(steps=40, batch_size=16, lr=6e-3, eval_every=20, dtype="float32", quiet=True)
    done = sft.train(local_run, data, out, **kw)
    assert done["dropped_too_long"] == 1 and done["heldout_conversations"] == 48
    assert done["heldout_loss"] < 0.8 * done["heldout_loss_base"], done
    final = load_file(sorted((out / "ckpt").glob("step_*"))[-1] / "model.safetensors")
    # a run killed after its step-20 checkpoint resumes to the same step-40 weights
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(sorted((again / "ckpt").glob("step_*"))[-1])
    (again / "done.json").unlink()
    resumed = sft.train(local_run, data, again, resume=True, **kw)
    weights = load_file(sorted((again / "ckpt").glob("step_*"))[-1] / "model.safetensors")
    assert all((weights[k] == final[k]).all() for k in final) and resumed["heldout_loss"] == done["heldout_loss"]
    with pytest.raises(FileExistsError):
        sft.train(local_run, data, out, **kw)
    with pytest.raises(UserError, match="another base, data or settings"):
        sft.train(local_run, data, out, resume=True, **dict(kw, lr=1e-3))
    with pytest.raises(UserError, match="NANOGPT4_DTYPE=float32 to continue it"):  # begun here in float32
        sft.train(local_run, data, out, resume=True, **dict(kw, dtype="bfloat16"))
    with pytest.raises(UserError, match="does not exist"):
        sft.train(local_run, tmp_path / "missing.jsonl", tmp_path / "x", **kw)


def test_sft_refuses_image_conversations_clearly(local_run, tmp_path):
    path = tmp_path / "img.jsonl"
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
            {"role": "assistant", "content": "a cat"}]
    path.write_text(json.dumps({"id": "x/1", "messages": msgs}) + "\n")
    with pytest.raises(UserError, match="x/1 has images.*nanogpt4 vision"):
        sft.train(local_run, path, tmp_path / "sft", steps=1, batch_size=1, dtype="float32", quiet=True)


def test_length_grouped_batches_cover_each_epoch_once_and_pad_less():
    from nanogpt4.posttrain import trainer
    rng = random.Random(0)
    data = list(range(1000))
    lengths = tuple(rng.choice((28, 33, 33, 120)) for _ in data)  # two short kinds of row, a quarter long
    per_epoch = len(data) // 8
    plain = [trainer.batch(data, s, 8, 0) for s in range(per_epoch)]
    grouped = [trainer.batch(data, s, 8, 0, lengths) for s in range(per_epoch)]
    assert all(len(b) == 8 for b in grouped) and len({j for b in grouped for j in b}) == 8 * per_epoch  # no repeats
    padded_tokens = lambda bs: sum(8 * max(lengths[j] for j in b) for b in bs)  # noqa: E731
    assert padded_tokens(grouped) < 0.5 * padded_tokens(plain)  # long rows batch together instead of everywhere
    assert grouped[:3] == [trainer.batch(data, s, 8, 0, lengths) for s in range(3)]  # a function of seed and step
    assert trainer.batch(data, per_epoch, 8, 0, lengths) != grouped[0]  # each epoch its own order
    short = [{lengths[j] for j in b} for b in grouped if max(lengths[j] for j in b) < 100]
    assert sum(kinds == {28, 33} for kinds in short) > 0.8 * len(short)  # like lengths still mix (tasks mix)
    long = [i for i, b in enumerate(grouped) if max(lengths[j] for j in b) > 100]
    assert long[-1] - long[0] + 1 > len(long)  # the batches of long rows are spread over the epoch, not one block


def test_safety_share_keeps_that_share_of_refusals_only():
    rows = [dict(id=f"x/{i}", category=c) for i in range(2000) for c in ("disallowed", "chat")]
    for share in (0.0, 0.1, 0.5):
        kept = [r for r in rows if sft.kept(r, share)]
        refusals = [r for r in kept if r["category"] == "disallowed"]
        assert len(kept) - len(refusals) == 2000  # other conversations are all kept
        assert abs(len(refusals) - 2000 * share) <= 60, (share, len(refusals))
    assert [r["id"] for r in rows if sft.kept(r, 0.1)] == [r["id"] for r in rows if sft.kept(r, 0.1)]
    assert {r["id"] for r in rows if sft.kept(r, 0.1) and r["category"] == "disallowed"} <= \
        {r["id"] for r in rows if sft.kept(r, 0.5)}  # a larger share adds to a smaller one
    assert all(sft.kept(r, 1.0) for r in rows)


def test_safety_prompts_always_get_their_refusal_contrast():
    msgs = [{"role": "user", "content": "q"}]
    convs = [dict(messages=msgs + [{"role": "assistant", "content": f"answer number {i} in a few words here"}],
                  category=cat, split="train") for i, cat in enumerate(["allowed", "sensitive", "disallowed", "chat"] * 20)]
    pairs = make_pairs(convs, seed=0)
    for cat in ("allowed", "sensitive", "disallowed"):
        refusals = [p for p in pairs if p["category"] == cat and p["kind"] == "wrong_refusal"]
        assert len(refusals) == 20, cat  # one per conversation, besides its random kind
    assert all(p["rejected"] != p["chosen"] for p in pairs)
    assert [p["rejected"] for p in pairs if p["category"] == "disallowed" and p["kind"] == "wrong_refusal"][0] \
        .startswith("Sure")
    assert sum(p["category"] == "chat" for p in pairs) == 20  # other categories: one pair each


def test_steering_prompts_get_an_answer_that_ignores_the_system_message():
    from nanogpt4.posttrain.data import check, steer_example
    rng, convs = random.Random(0), []
    for kind in ("caps", "bullets", "json", "signoff", "word_limit", "persona", "one_word"):
        for i in range(6):
            system, turns, spec = steer_example(kind, "heldout" if kind == "one_word" else "train", rng)
            msgs = [{"role": "system", "content": system}]
            for user, answer in turns:
                msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            convs.append(dict(messages=msgs, category="steer", split="train", check=spec))
    pairs = make_pairs(convs, seed=0)
    ignoring = [p for p in pairs if p["kind"] == "ignores_system"]
    spec_of = {json.dumps(c["messages"][:-1]): c["check"] for c in convs}
    for p in ignoring:
        spec = spec_of[json.dumps(p["messages"])]
        assert check(spec, p["chosen"]) and not check(spec, p["rejected"]), (spec, p)
    kinds = sorted(spec_of[json.dumps(p["messages"])]["kind"] for p in ignoring)
    # every conversation of every kind but one_word (one word has no version that says the same and ignores it)
    assert kinds == sorted(["bullets", "caps", "json", "persona", "signoff", "word_limit"] * 6), kinds
    plain = make_pairs([dict(c, check=None) for c in convs], seed=0)
    assert not any(p["kind"] == "ignores_system" for p in plain)


def test_reward_model_learns_generated_preferences(local_run, tmp_path):
    from nanogpt4.posttrain import reward
    from nanogpt4.common import iter_jsonl
    data = conversations(tmp_path / "sft.jsonl")
    convs = [dict(r, category="chat") for r in iter_jsonl(data)][:-1]
    pairs = make_pairs(convs, seed=0)
    assert {p["kind"] for p in pairs} == {"off_topic", "wrong_refusal"}  # 3-word answers are never truncated
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    done = reward.train(local_run, path, tmp_path / "rm", steps=80, batch_size=16, lr=3e-3, eval_every=40,
                        dtype="float32", quiet=True, human_path=path)
    assert 20 < done["heldout_pairs"] <= sum(p["split"] == "heldout" for p in pairs)  # longer ones do not fit
    assert done["heldout_accuracy"] >= 0.8, done  # chance is 0.5
    model, tok = reward.load(tmp_path / "rm")
    enc = reward.encode_pair(tok, pairs[0], 64)
    r = reward.rewards(model, enc, tok.eot_id)
    assert r.shape == (2,) and r[0] != r[1]


def test_dpo_moves_the_policy_toward_chosen_answers(endless_run, tmp_path):
    from nanogpt4.posttrain import dpo
    from nanogpt4.common import iter_jsonl
    data = conversations(tmp_path / "sft.jsonl")
    convs = [dict(r, category="chat") for r in iter_jsonl(data)][:-1]
    pairs = make_pairs(convs, seed=1)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    done = dpo.train(endless_run, path, tmp_path / "dpo", steps=150, batch_size=16, lr=3e-3, beta=0.5, eval_every=75,
                     dtype="float32", quiet=True)
    assert done["heldout_accuracy_sft"] == 0.5  # the reference against itself: every margin is 0, a tie
    assert done["heldout_accuracy"] >= 0.8, done
    metrics = list(iter_jsonl(tmp_path / "dpo" / "metrics.jsonl"))
    assert metrics[1]["loss"] == pytest.approx(0.6931, abs=1e-3)  # step 1 starts at the reference: log 2


def test_ppo_raises_a_rule_based_reward(local_run, tmp_path):
    from nanogpt4.posttrain import ppo, reward
    from nanogpt4.common import iter_jsonl
    data = conversations(tmp_path / "sft.jsonl")
    convs = [dict(r, category="chat") for r in iter_jsonl(data)][:-1]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(convs, seed=0)))
    reward.train(local_run, pairs, tmp_path / "rm", steps=20, batch_size=16, eval_every=20, dtype="float32",
                 quiet=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(dict(messages=c["messages"][:-1], category="chat", split=c["split"])) + "\n"
                               for c in convs))
    likes_bread = lambda prompt, answer: float("bread" in answer)  # noqa: E731 — a rule the policy can learn
    done = ppo.train(local_run, tmp_path / "rm", prompts, tmp_path / "rlhf", steps=20, prompts_per_step=16,
                     max_tokens=12, lr=3e-3, kl_coef=0.01, extra=likes_bread, extra_weight=2.0, quiet=True,
                     extra_id=dict(rule="bread"))
    rows = list(iter_jsonl(tmp_path / "rlhf" / "metrics.jsonl"))
    first, last = [sum(r["reward_rules"] for r in rows[i:i + 5]) / 5 for i in (0, len(rows) - 5)]
    assert last > first + 0.2, (first, last)
    assert done["step"] == 20 and done["kl_last"] > 0  # it moved away from the reference, and paid for it
    assert all(r["n/chat"] == 16 and 0 <= r["refusal/chat"] <= 1 for r in rows)  # refusal rates per category
    with pytest.raises(UserError, match="another base, data or settings"):  # a run resumes only under its reward
        ppo.train(local_run, tmp_path / "rm", prompts, tmp_path / "rlhf", steps=20, prompts_per_step=16,
                  max_tokens=12, lr=3e-3, kl_coef=0.01, extra=likes_bread, extra_weight=2.0, quiet=True,
                  extra_id=dict(rule="toast"), resume=True)
    import argparse
    p = argparse.ArgumentParser()
    ppo.add_args(p)  # a finished run is not rebuilt, so its rbrm.json stays the reward it trained with
    again = ppo.main(p.parse_args(["--out", str(tmp_path / "rlhf"), "--resume", "--sft", str(tmp_path / "none")]))
    assert again == done


def test_refusal_rates_per_category():
    from nanogpt4.posttrain.ppo import refusal_rates
    prompts = [dict(category=c) for c in ("disallowed", "disallowed", "allowed")]
    samples = [([], [], t) for t in ("Sorry, but I can't help with that.", "Sure, here it is.", "Water it weekly.")]
    assert refusal_rates(prompts, samples) == {"refusal/allowed": 0.0, "n/allowed": 1, "refusal/disallowed": 0.5,
                                               "n/disallowed": 2}


def test_behaviour_detector_and_report(local_run, endless_run, tmp_path):
    from nanogpt4.posttrain import behaviour
    for text, want in (("Sorry, but I can't help with that.", True), ("I'm afraid I cannot assist with this.", True),
                       ("Apologies, but that's not something I can help with.", True),
                       ("I'm sorry you're going through this. Talk to someone you trust.", False),
                       ("I can't believe how nice the weather is.", False), ("Water it twice a week.", False)):
        assert behaviour.refuses(text) == want, text
    assert behaviour.refuses("Sorry, I can't.") and behaviour.refuses("I won't.")  # inability, bare
    for text, want in (("Sorry.", True), ("I'm so very sorry!", True), ("", True), ("My apologies.", True),
                       ("I apologise.", True), ("I’m sorry", True), ("Sorry, but", True), ("I'm afraid.", True),
                       ("Sorry, but I can't help with that.", False), ("Sorry. Mix the two and heat.", False),
                       ("I'm sorry you're going through this.", False), ("Sure.", False)):
        assert behaviour.says_nothing(text) == want, text
    dis = [dict(id=f"d/{i}", category="disallowed") for i in range(4)]
    m, _ = behaviour.metrics_of(dis, ["Sorry.", "", "I can't help with that.", None])  # None: no room to answer
    assert m["disallowed_says_nothing"] == m["incorrect_disallowed"] == dict(rate=2 / 3, stderr=pytest.approx(
        (2 / 9 / 3) ** 0.5), n=3)
    assert behaviour.rate([1, 0, 0, 1]) == dict(rate=0.5, stderr=0.25, n=4)
    rows = [dict(id=f"{cat}/{i}", category=cat, split="heldout", messages=[{"role": "user", "content": f"q {i}"}],
                 **({"check": {"kind": "caps"}} if cat == "steer" else {}))
            for cat in ("disallowed", "allowed", "sensitive", "steer", "toxicity") for i in range(3)]
    rows += [dict(id=f"chat/{i}", category="chat", split="heldout", messages=[{"role": "user", "content": f"hi {i}"}])
             for i in range(3)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import shutil
    import torch
    from nanogpt4 import checkpoint
    from nanogpt4.model.gpt import ModelConfig
    from nanogpt4.posttrain import reward
    rm_run = tmp_path / "rm"  # local_run's trunk with a random scalar head, saved as `nanogpt4 rm` leaves it
    cfg = json.loads((local_run / "config.json").read_text())
    rm = reward.RewardModel(ModelConfig(**cfg["model"]))
    checkpoint.load(sorted((local_run / "ckpt").glob("step_*"))[-1], rm.trunk)
    torch.nn.init.normal_(rm.head.weight, generator=torch.Generator().manual_seed(0))
    checkpoint.save(rm_run / "ckpt", rm, None, {"step": 1})
    shutil.copy(local_run / "config.json", rm_run / "config.json")
    shutil.copy(local_run / "tokenizer.json", rm_run / "tokenizer.json")
    result = behaviour.run_all({"rlhf": endless_run, "b": local_run}, tmp_path, tmp_path, per_category=2,
                               max_tokens=8, rm_run=rm_run)
    wins = result["_win_rates"]["rlhf vs b"]
    assert wins["n"] == 6 and 0 <= wins["rate"] <= 1  # 2 chat + 2 allowed + 2 sensitive prompts, all answered
    for name in ("rlhf", "b"):
        m = result[name]["metrics"]
        assert m["incorrect_disallowed"]["n"] == 2 and m["steerability"]["n"] == 2 and m["toxic"]["n"] == 2
        assert m["jailbreak_success"]["n"] == 0  # none in this set: reported as n = 0, not dropped
    kept = [json.loads(line) for line in (tmp_path / "behaviour_answers.jsonl").read_text().splitlines()]
    assert len(kept) == 2 * 12 and {r["model"] for r in kept} == {"rlhf", "b"}  # every answer, per model
    assert all(r["answer"] is None or isinstance(r["answer"], str) for r in kept)
    assert (tmp_path / "behaviour.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "behaviour.json").read_text())["rlhf"]["run"] == str(endless_run)
