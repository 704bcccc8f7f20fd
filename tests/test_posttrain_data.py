"""The post-training datasets: steerability checkers, held-out hygiene, excluded subtasks, chat rendering within
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


def test_excluded_subtasks_are_not_read():
    assert not any(D.excluded(s) for s in D.INSTRUCTIONS)
    for name in ("subtask001_quoref_question_generation", "subtask028_drop_answer_generation",
                 "subtask029_winogrande_full_object", "subtask041_qasc_answer_generation",
                 "subtask058_multirc_question_answering", "subtask061_ropes_answer_generation",
                 "subtask003_mctaco_question_generation_event_duration", "subtask024_cosmosqa_answer_generation"):
        assert D.excluded(name)
        assert not any(name in m for m in D.BIGBENCH_MEMBERS)


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
    assert manifest["totals"]["hhh"] == 221
    assert sum(r["source"] == "pyrit-refusal" for r in D.load(out, "refusal_labels")) == 105
    assert set(manifest["contamination"]["items"]) == {"MMLU", "HellaSwag", "ARC-Challenge", "WinoGrande",
                                                       "TruthfulQA", "GSM-8K", "DROP", "HumanEval"}
    assert {c for split in manifest["counts"]["sft"].values() for c in split} == {
        "disallowed", "allowed", "sensitive", "chat", "instruction", "steer"}


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
    assert not any(r.get("subtask") in ("subtask044_essential_terms_identifying_essential_words",
                                        "subtask045_miscellaneous_sentence_paraphrasing") for r in sft_train)
    assert not any(r["source"] == "harmbench" for r in sft_train)
    assert not any(set(r.get("harm", "").split("+")) & D.HELDOUT_INTENTS for r in sft_train)
    assert not any(r.get("check", {}).get("kind") in D.HELDOUT_KINDS for r in sft_train)
    assert not any(r.get("family") in D.HELDOUT_FAMILIES for r in sft_train)
    held_jb = {r["messages"][0]["content"] for r in D.load(out, "prompts", "heldout") if r.get("attack")}
    assert held_jb and not held_jb & {r["messages"][0]["content"] for r in sft_train if r.get("attack")}


@pytest.mark.network
def test_excluded_subtasks_are_absent(built):
    out, _ = built
    subtasks = {r.get("subtask") for name in ("sft", "prompts") for r in D.load(out, name)} - {None}
    assert subtasks and not any(D.excluded(s) for s in subtasks)
    assert subtasks <= set(D.INSTRUCTIONS)


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
