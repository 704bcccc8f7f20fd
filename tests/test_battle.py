"""The model-graded battle of behaviour.battle: both orders cancel a grader's position bias, a grader's verdict
comes through, invalid gradings are left out and counted, records resume; fake completion functions, except one
small run with local checkpoints."""
import json
import re

from nanogpt4 import report
from nanogpt4.evals.completion import CompletionResult
from nanogpt4.posttrain import behaviour

ROWS = [dict(id=f"{cat}/{i}", category=cat, messages=[{"role": "user", "content": f"{cat} question {i}"}])
        for cat in ("chat", "instruction", "allowed", "sensitive", "disallowed", "steer") for i in range(2)]
JUDGED = 8  # chat, instruction, allowed, sensitive: 2 each


class Fake:
    """A completion function answering with `answer(prompt text)`; counts its calls."""

    def __init__(self, answer, name="fake"):
        self.answer, self.name, self.calls = answer, name, 0

    def __call__(self, prompt, **kw):
        self.calls += 1
        return CompletionResult([self.answer(prompt[-1]["content"] if isinstance(prompt, list) else prompt)])


def responses(text):
    """Response 1 and Response 2 as the battle-chat prompt shows them."""
    m = re.search(r"Response 1: (.*)\n\nResponse 2: (.*)\n\nIs Response 1", text)
    return m.group(1), m.group(2)


def longer(text):
    r1, r2 = responses(text)
    return "Yes" if len(r1) > len(r2) else "No"


LONG, SHORT = Fake(lambda p: "a long and careful answer", "long"), Fake(lambda p: "short", "short")


def test_an_always_yes_grader_gives_exactly_one_half(tmp_path):
    res = behaviour.battle(("long", LONG), {"short": SHORT}, ROWS, Fake(lambda p: "Yes"), tmp_path, log=lambda s: 0)
    r = res["long vs short"]
    assert r["rate"] == 0.5 and r["stderr"] == 0.0 and r["n"] == 2 * JUDGED and r["invalid"] == 0
    assert r["orders"]["shown_first"]["rate"] == 1.0 and r["orders"]["shown_second"]["rate"] == 0.0
    assert r["grader"] == "fake" and len(r["records"]) == 2


def test_the_graders_verdict_comes_through_in_both_orders(tmp_path):
    grader = Fake(longer)
    assert behaviour.battle(("long", LONG), {"short": SHORT}, ROWS, grader, tmp_path / "a",
                            threads=1, log=lambda s: 0)["long vs short"]["rate"] == 1.0
    assert behaviour.battle(("short", SHORT), {"long": LONG}, ROWS, grader, tmp_path / "b",
                            threads=1, log=lambda s: 0)["short vs long"]["rate"] == 0.0
    assert grader.calls == 4 * JUDGED  # every judged prompt, in both orders, for both battles; no other prompt


def test_invalid_gradings_are_left_out_and_counted_and_records_resume(tmp_path):
    def grade(text):  # no verdict on one prompt when the long answer is shown first
        return "I cannot tell" if "chat question 1" in text and responses(text)[0] == LONG.answer("") else longer(text)
    grader = Fake(grade)
    r = behaviour.battle(("long", LONG), {"short": SHORT}, ROWS, grader, tmp_path, log=lambda s: 0)["long vs short"]
    assert r["invalid"] == 1 and r["n"] == 2 * JUDGED - 1 and r["rate"] == 1.0
    assert r["orders"]["shown_first"]["n"] == JUDGED - 1 and r["orders"]["shown_second"]["n"] == JUDGED
    again = Fake(lambda p: 1 / 0)  # resumed from the records: nothing is graded again
    assert behaviour.battle(("long", LONG), {"short": SHORT}, ROWS, again, tmp_path, threads=1, log=lambda s: 0)[
        "long vs short"] == dict(r, grader=again.name) and again.calls == 0


def test_battle_of_local_runs_and_the_report_card(local_run, endless_run, tmp_path):
    res = behaviour.battle(("rlhf", endless_run), {"sft": local_run}, ROWS[:4], Fake(lambda p: "Yes", "judge"),
                           tmp_path, max_tokens=4, log=lambda s: 0)
    r = res["rlhf vs sft"]
    assert r["rate"] == 0.5 and r["n"] == 8 and r["errors"] == 0
    event = [json.loads(line) for line in open(r["records"][0])][1]
    assert event["data"]["answers"]["completion1"] and event["data"]["answers"]["completion2"]  # both runs answered
    metrics = {k: behaviour.rate([1, 0]) for k in report.LABELS}
    (tmp_path / "posttrain").mkdir()
    older = {k: v for k, v in metrics.items() if k != "disallowed_says_nothing"}  # measured before that metric
    (tmp_path / "posttrain" / "behaviour.json").write_text(json.dumps(
        {"rlhf": dict(run="x", metrics=metrics, examples={}), "sft": dict(run="y", metrics=older, examples={}),
         "_battle": res}))
    text = "\n".join(report.posttrain_section(tmp_path))
    assert "judged by `judge`" in text and "rlhf vs sft 0.50 ± 0.00 (8 gradings, 0 invalid)" in text
    assert f"| {report.LABELS['disallowed_says_nothing']} | – | 0.50 ± 0.35 (2) |" in text  # sft first, then rlhf


def test_behaviour_cli_with_a_grader(local_run, endless_run, tmp_path):
    from nanogpt4.cli import main as cli
    rows = [dict(ROWS[i], split="heldout") for i in (0, 2, 8)]  # chat, instruction, disallowed
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli(["behaviour", "--models", f"base={local_run},rlhf={endless_run},sft={local_run}", "--data", str(tmp_path),
         "--out", str(tmp_path), "--per-category", "1", "--max-tokens", "4", "--grader", str(local_run),
         "--battle-vs", "sft"])
    r = json.loads((tmp_path / "behaviour.json").read_text())["_battle"]
    assert list(r) == ["rlhf vs sft"]  # rlhf first; only the model asked for
    r = r["rlhf vs sft"]  # a random tiny grader: its gradings may all be invalid (rate nan), but all are counted
    assert r["n"] + r["invalid"] == 4 and r["errors"] == 0 and r["grader"] == f"local:{local_run}"
