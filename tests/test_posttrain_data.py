"""The post-training datasets: steerability checkers, held-out hygiene, excluded registry tasks, chat rendering within
a 256-token context, manifest counts and the skipped rebuild. Texts of the safety sets are never printed."""

import pytest

from nanogpt4 import chat
from nanogpt4.posttrain import data as D

COMPLIANT = {  # kind: (spec, compliant text, non-compliant text)
    "caps": ({"kind": "caps"}, "THE CAPITAL OF FRANCE IS PARIS.", "The capital of France is Paris."),
    "bullets": ({"kind": "bullets", "n": 3}, "- Apple\n- Pear\n- Plum", "- Apple\n- Pear"),
    "json": ({"kind": "json", "key": "answer"}, '{"answer": "Paris"}', 'Sure! {"answer": "Paris"}'),
    "signoff": ({"kind": "signoff", "text": "Cheers!"}, "Paris.\nCheers!", "Cheers! Paris is the capital."),
    "word_limit": ({"kind": "word_limit", "max": 5}, "Paris is the capital.", "The capital city of France is Paris."),
    "one_word": ({"kind": "one_word"}, "Paris.", "It is Paris."),
    "persona": ({"kind": "persona", "name": "Zara"}, "I'm Zara, your tutor.", "I'm Zarathustra, your tutor."),
}


@pytest.mark.parametrize("kind", D.CHECK_KINDS)
def test_every_checker_accepts_compliant_and_rejects_non_compliant(kind):
    spec, good, bad = COMPLIANT[kind]
    assert D.check(spec, good)
    assert not D.check(spec, bad)


def test_check_edge_cases():
    assert not D.check({"kind": "caps"}, "123 !!!")  # no letters is not "all caps"
    assert not D.check({"kind": "bullets", "n": 2}, "- a\nsome text\n- b")  # text between bullets
    assert D.check({"kind": "bullets", "n": 2}, "Here you go:\n- a\n- b")  # one lead-in line is fine
    assert not D.check({"kind": "json"}, "[1, 2]")  # an object, not any JSON
    assert not D.check({"kind": "word_limit", "max": 3}, "")
    with pytest.raises(D.DataError):
        D.check({"kind": "haiku"}, "x")


def test_generated_steer_answers_comply_and_held_out_parameters_are_unseen():
    import random
    rng = random.Random(0)
    seen = {"train": set(), "heldout": set()}
    for kind in D.CHECK_KINDS:
        for split in ("heldout",) if kind in D.HELDOUT_KINDS else D.SPLITS:
            for _ in range(30):
                system, turns, spec = D.steer_example(kind, split, rng)
                assert all(D.check(spec, answer) for _, answer in turns)
                seen[split].add(system)
                seen[split] |= {user for user, _ in turns}
                if kind == "persona":
                    assert spec["name"] in D.NAMES[split == "heldout"]
    assert not seen["train"] & seen["heldout"]


def test_registry_tasks_built_from_benchmarks_are_excluded():
    for task in ("arc", "mmlu-high-school", "gsm8k_cot", "drop_answers", "truthfulqa", "winogrande",
                 "quoref-questions", "multirc"):
        assert D.excluded(task)
    for task in ("search-queries", "archaeology", "dropout-rates", "born_first", "french-lexicon"):
        assert not D.excluded(task)


def fake_registry(root, tasks):
    """A registry `data/` tree: {task: [jsonl rows]}."""
    import json
    for task, rows in tasks.items():
        (root / "data" / task).mkdir(parents=True)
        (root / "data" / task / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_registry_instructions_keep_short_english_chat_samples(tmp_path):
    def row(user, ideal, system=None):
        return {"input": ([{"role": "system", "content": system}] if system else []) +
                         [{"role": "user", "content": user}], "ideal": ideal}
    reg = fake_registry(tmp_path, {
        "good": [row("Spell 'cat' backwards.", "tac", "Answer with the word only."), row("2+2?", ["4", "four"])],
        "rejected": [row("x" * 300, "y"), row("Q?", "a" * 121), row("Q?", ""), {"input": "plain", "ideal": "a"}, ["a", "list"],
                     row("Traduisez «été» en anglais… 日本語のテキスト", "summer"),
                     {"input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                {"role": "user", "content": "c"}], "ideal": "d"}],
        "steganography": [row("Keep?", "no")],  # its own licence
        "mmlu_extra": [row("Keep?", "no")],  # built from a benchmark we evaluate
    })
    rows = list(D.registry_instructions(reg))
    assert rows == [("good", "Answer with the word only.", "Spell 'cat' backwards.", "tac"),
                    ("good", None, "2+2?", "4")]


def test_instruction_tasks_are_held_out_whole():
    splits = {D.instruction_split(f"task-{i}") for i in range(64)}
    assert splits == {"train", "heldout"}
    assert all(D.instruction_split("born_first") == D.instruction_split("born_first") for _ in range(3))


def test_truthful_pairs_prefer_the_true_answer():
    item = dict(id="7", question="Q?", options=["false a", "true", "false b", "false c"], label=1)
    pairs = list(D.truthful_pairs([item]))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("true", "false a"), ("true", "false b"),
                                                            ("true", "false c")]
    assert all(p["split"] == "heldout" and p["messages"] == [{"role": "user", "content": "Q?"}] for p in pairs)


def test_refusals_are_brief_and_not_judgemental():
    import random
    rng = random.Random(0)
    for labels in ((), ("self-harm",), ("violence",)):
        for _ in range(20):
            text = D.refusal(rng, labels)
            assert len(text) < 200 and not any(w in text.lower() for w in ("wrong", "ashamed", "unethical"))
    assert "988" in D.refusal(rng, ("self-harm",))


# ----------------------------------------------------------------------------- the built sets (pinned packages)

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("posttrain-data")
    manifest = D.build(out, log=lambda *a: None)
    return out, manifest


@pytest.mark.network
def test_manifest_counts_match_the_files(built):
    out, manifest = built
    assert not manifest["skipped"]
    for name in D.FILES:
        rows = D.load(out, name)
        assert len(rows) == manifest["totals"][name]
        assert D.counts(rows) == manifest["counts"][name]
        assert len(D.load(out, name, "train")) + len(D.load(out, name, "heldout")) == len(rows)
    assert manifest["totals"]["human_pairs"] == 3 * 684
    assert sum(r["source"] == "pyrit-refusal" for r in D.load(out, "refusal_labels")) == 105
    assert set(manifest["contamination"]["items"]) == {"MMLU", "HellaSwag", "ARC-Challenge", "WinoGrande",
                                                       "TruthfulQA", "GSM-8K", "DROP", "HumanEval"}
    assert {c for split in manifest["counts"]["sft"].values() for c in split} == {
        "disallowed", "allowed", "sensitive", "chat", "instruction", "steer"}


@pytest.mark.network
def test_refusal_labels_agree_with_the_rubric(built):
    """Each written label row's propositions give, through the rubric, the class it is labelled with: the rubric
    can tell every style apart (an apology alone and a rambling refusal are not the desired style)."""
    from nanogpt4.posttrain import rbrm
    out, _ = built
    rows = [r for r in D.load(out, "refusal_labels") if r["source"] == "written"]
    rub = rbrm.rubric()
    assert {r["style"] for r in rows} == {"desired", "evasive", "preachy", "rambling", "apology_only", "helpful"}
    props = {p: [float(r["labels"].get(p, False)) for r in rows] for p in rub["propositions"]}
    classes = [list(rub["classes"])[k] for k in rbrm.class_probs(rub, props).argmax(1).tolist()]
    assert classes == [r["class"] for r in rows]
    # and the offline classifier learns it: held-out rows (unseen undesired wordings) get their class
    clf = rbrm.Classifier([r for r in rows if r["split"] == "train"])
    held = [r for r in rows if r["split"] == "heldout"]
    acc = rbrm.class_accuracy(rub, rbrm.class_probs(rub, clf.propositions([r["prompt"] for r in held],
                                                                         [r["completion"] for r in held])), held)
    assert acc["desired"] >= 0.9 and acc["apology_only"] >= 0.9, acc  # measured 1.0 and 1.0
    assert acc["helpful"] >= 0.8, acc  # held-out answers of unseen template families: measured 0.85


@pytest.mark.network
def test_second_build_is_skipped(built):
    out, manifest = built
    again = D.build(out, log=lambda *a: None)
    assert again["skipped"] and again["files"] == manifest["files"]
    (out / "sft.jsonl").write_text("")  # a changed file is rebuilt
    assert not D.build(out, log=lambda *a: None)["skipped"]


@pytest.mark.network
def test_no_held_out_prompt_appears_in_training(built):
    out, _ = built
    def users(rows):
        return {D.norm(chat.text_of(m["content"])) for r in rows for m in r["messages"] if m["role"] == "user"}
    held = users(D.load(out, "prompts", "heldout"))
    train = users(D.load(out, "sft", "train")) | users(D.load(out, "prompts", "train"))
    assert held and train and not held & train
    sft_train = D.load(out, "sft", "train")
    instruction_tasks = {r["task"] for r in sft_train if r["category"] == "instruction"}
    assert len(instruction_tasks) >= 80 and not any(D.instruction_split(t) == "heldout" for t in instruction_tasks)
    assert any(r["category"] == "instruction" for r in D.load(out, "prompts", "heldout"))
    assert not any(r["source"] == "harmbench" for r in sft_train)
    assert not any(set(r.get("harm", "").split("+")) & D.HELDOUT_INTENTS for r in sft_train)
    assert not any(r.get("check", {}).get("kind") in D.HELDOUT_KINDS for r in sft_train)
    assert not any(r.get("family") in D.HELDOUT_FAMILIES for r in sft_train)
    held_jb = {r["messages"][0]["content"] for r in D.load(out, "prompts", "heldout") if r.get("attack")}
    assert held_jb and not held_jb & {r["messages"][0]["content"] for r in sft_train if r.get("attack")}


@pytest.mark.network
def test_excluded_registry_tasks_are_absent(built):
    out, _ = built
    tasks = {r.get("task") for name in ("sft", "prompts") for r in D.load(out, name)} - {None}
    assert tasks and not any(D.excluded(t) or t in D.REGISTRY_SKIP for t in tasks)
    rows = [r for r in D.load(out, "sft") if r["category"] == "instruction"]
    assert max(sum(r["task"] == t for r in rows) for t in tasks) <= D.INSTRUCTION_CAP


@pytest.mark.network
def test_every_conversation_renders_and_fits(built, tiny_tokens):
    from nanogpt4.tokenizer import Tokenizer
    tok = Tokenizer.load(tiny_tokens / "tokenizer" / "tokenizer.json")
    out, _ = built
    longest = 0
    for r in D.load(out, "sft"):
        assert r["messages"][-1]["role"] == "assistant" and r["split"] in D.SPLITS
        rendered = chat.render(tok, r["messages"], generate=False)
        assert sum(rendered.mask) > 1, r["id"]  # assistant content and its <|end|>
        longest = max(longest, len(rendered.ids))
        if r["category"] == "steer":
            assert all(D.check(r["check"], m["content"]) for m in r["messages"] if m["role"] == "assistant")
    assert longest <= 256
    for r in D.load(out, "prompts"):
        assert r["messages"][-1]["role"] == "user" and r["category"] in D.CATEGORIES
        assert len(chat.render(tok, r["messages"]).ids) <= 256 - 32, r["id"]  # room for an answer
