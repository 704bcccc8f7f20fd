"""Capability prediction: the pass@k estimator, the problem set's tests, completion cutting, measuring a run,
and the bucket fit → registered prediction → verification round trip."""
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nanogpt4 import runs
from nanogpt4.config import TrainConfig
from nanogpt4.engine import Engine, SamplingParams, prompt_ids
from nanogpt4.evals.execution import run_programs
from nanogpt4.evals.humaneval import body_indent, completion_end, pass_at_k, program
from nanogpt4.scaling import capability as K
from nanogpt4.scaling.registry import RegistryError


def test_pass_at_k_matches_brute_force():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                draws = list(itertools.combinations([1] * c + [0] * (n - c), k))
                assert pass_at_k(n, c, k) == pytest.approx(np.mean([any(d) for d in draws]), abs=1e-12)
    assert pass_at_k(200, 3, 1) == pytest.approx(3 / 200)


def test_reference_solutions_pass_and_wrong_ones_fail():
    problems = K.build_problems()
    assert 60 <= len(problems) <= 100 and len({p["prompt"] for p in problems}) == len(problems)
    assert K.build_problems() == problems  # fixed seed
    assert run_programs([program(p, p["canonical_solution"]) for p in problems]) == ["passed"] * len(problems)
    wrong = [" None" if p["kind"] == "line" else " " * body_indent(p["prompt"]) + "pass\n" for p in problems]
    assert "passed" not in run_programs(map(program, problems + problems, wrong + [""] * len(problems)))
    assert {p["kind"] for p in problems} == {"line", "body"}
    many = K.build_problems(variants=12)  # small identifier pools: repeated draws are left out, not counted twice
    assert len({p["prompt"] for p in many}) == len(many) > 5 * len(problems)
    assert [p["task_id"] for p in many] == [f"nanogpt4/{i}" for i in range(len(many))]


def cut(text, indent):
    """A completion cut by the one code stop rule, for a prompt whose body has `indent` (None: a line problem)."""
    prompt = {None: "x =", 4: "def f(x):\n", 8: "class A:\n    def f(self):\n"}[indent]
    i = completion_end(prompt)(text)
    return text if i is None else text[:i]


def test_completion_ends_at_stops_and_dedent():
    assert cut("    return x\n\ndef g():\n    pass", 4) == "    return x\n"
    assert cut("    return x\nprint(f(1))", 4) == "    return x"
    assert cut("    return x\n# comment", 4) == "    return x"
    assert cut("    y = 1\n    return y\nx = 3\n", 4) == "    y = 1\n    return y"
    assert cut("        self.a = a\n\n    def other(self):\n", 8) == "        self.a = a\n"
    assert cut("    return [\n1, 2]", 4) == "    return ["  # a dedent ends the body even inside brackets
    assert cut("class A:\n    pass", 4) == ""
    assert cut("    return x", 4) == "    return x"
    assert cut("    return x\n  ", 4) == "    return x\n  "  # a line of spaces: not yet a dedent
    assert cut(" x + y\n    return 2\n", None) == " x + y"  # a line problem ends with its line


def test_sampling_ends_each_completion_by_the_stop_rule_as_soon_as_it_ends(local_run):
    """The engine cuts each sample exactly where the rule cuts the free-running sample of the same seed, and
    stops generating it there."""
    run = runs.load(local_run, "cpu")
    eng = Engine(run.model, run.tok)
    for prompt in ("def add(x, y):\n", 'def f(a):\n    """Return a."""\n', "y = x +"):
        out, cut_tokens, budget = K.sample_completions(eng, prompt, 6, max_new_tokens=40, temperature=1.0, seed=3)
        ids, _ = prompt_ids(run.tok, prompt)
        free = eng.generate([ids], SamplingParams(max_tokens=40, temperature=1.0, seed=3, n=6))[0].choices
        end = completion_end(prompt)
        assert cut_tokens == 0 and budget == 40
        assert out == [c.text[:end(c.text)] if end(c.text) is not None else c.text for c in free]
    stopped = eng.generate([ids], SamplingParams(max_tokens=40, temperature=1.0, seed=3, n=6, stop_fn=end))[0].choices
    assert any(c.finish_reason == "stop" for c in stopped)
    assert sum(map(len, (c.token_ids for c in stopped))) < sum(map(len, (c.token_ids for c in free)))
    eng.close()


def test_long_prompts_are_kept_whole_and_the_completion_gets_the_rest(local_run):
    """HumanEval prompts were cut to n_ctx − max_new_tokens (128 of 256 tokens) and nothing said so: now the
    prompt is whole while it leaves MIN_NEW_TOKENS, the completion's budget shrinks instead, and both are returned
    (recorded per problem by `measure`)."""
    run = runs.load(local_run, "cpu")
    eng = Engine(run.model, run.tok)
    n_ctx = eng.n_ctx
    seen = set()
    size = lambda k: len(prompt_ids(run.tok, "#" + " a1" * k)[0])  # noqa: E731
    most = 3 * n_ctx // 4  # what the caller asks for
    for want in (n_ctx // 4 + 4, n_ctx - K.MIN_NEW_TOKENS // 2):  # fits whole with less room / must be cut
        k = next(k for k in range(1, n_ctx) if size(k) >= want)
        prompt = "#" + " a1" * k
        n_prompt = size(k)
        out, cut, budget = K.sample_completions(eng, prompt, 2, max_new_tokens=most, temperature=1.0, seed=0)
        seen.add(n_prompt + K.MIN_NEW_TOKENS <= n_ctx)
        if n_prompt + K.MIN_NEW_TOKENS <= n_ctx:
            assert cut == 0 and budget == n_ctx - n_prompt < most
        else:
            assert cut == n_prompt - (n_ctx - K.MIN_NEW_TOKENS) > 0 and budget == K.MIN_NEW_TOKENS
        assert len(out) == 2
    assert seen == {True, False}  # both cases were exercised
    eng.close()


def make_run(path, tok_path, **model_kw):
    """A run directory with a random-init GPT: config.json, tokenizer.json and a checkpoint."""
    from nanogpt4.model.gpt import GPT, ModelConfig
    from nanogpt4.tokenizer import Tokenizer
    from nanogpt4 import checkpoint
    mc = ModelConfig(**dict(dict(vocab_size=Tokenizer.load(tok_path).vocab_size, n_layer=1, n_embd=32, n_head=2,
                                 n_kv_head=1, seq_len=128), **model_kw))
    model = GPT(mc)
    model.init_weights(seed=0)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": mc.to_dict(), "train": {"depth": 1}}))
    shutil.copyfile(tok_path, path / "tokenizer.json")
    checkpoint.save(path / "ckpt", model, None, {"step": 0})
    return path


def test_measure_runs_and_caches(tiny_tokens, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", tiny_tokens / "tokenizer" / "tokenizer.json")
    problems = K.build_problems()[:3]
    table = K.measure([run], problems, n=4, max_new_tokens=16, table=tmp_path / "table.json", log=lambda s: None)
    res = table[str(run)]
    assert list(res) == [p["task_id"] for p in problems]
    assert all(r["n"] == 4 and 0 <= r["passed"] <= 4 and 1 <= r["unique"] <= 4 for r in res.values())
    assert json.loads((tmp_path / "table.json").read_text())["runs"] == json.loads(json.dumps(table))
    monkeypatch.setattr(K, "load_run", lambda *a: pytest.fail("cached work was redone"))
    assert K.measure([run], problems, n=4, max_new_tokens=16, log=lambda s: None) == table


def fake_runs(tmp_path, computes, alphas, k, n=10**6, cref=1e12):
    """Runs whose pass rates follow -log p = a_P·(C/cref)^(-k) exactly (a_P per problem): the bucket means then
    follow the law with α = the bucket's mean a_P."""
    runs, measured = [], {}
    for i, c in enumerate(computes):
        run = tmp_path / f"r{i}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"train": {"depth": i + 1}, "model": {}}))
        (run / "done.json").write_text(json.dumps({"flops": c}))
        runs.append(run)
        measured[str(run)] = {f"p{j}": dict(n=n, passed=round(n * np.exp(-a * (c / cref) ** -k)))
                              for j, a in enumerate(alphas)}
    return runs, measured


def test_bucket_fit_predict_verify_round_trip(tmp_path):
    alphas = [0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0]
    runs, measured = fake_runs(tmp_path, [1e10, 1e11, 3e11], alphas, k=0.3)
    for m in measured.values():
        m["unsolvable"] = dict(n=10**6, passed=0)  # solved by no fit model: dropped
    m["p0"]["passed"] = 0  # unsolved by the largest fit model only: dropped too
    target = tmp_path / "target"
    tc = TrainConfig(depth=9)
    rec = K.predict_capability(tmp_path / "capability.json", runs, target, tc.identity(), 1e12, measured=measured,
                               n_buckets=3, log=lambda s: None)
    pred = rec["prediction"]
    assert pred["problems_kept"] == 7 and pred["problems_total"] == 9
    assert [b["tasks"] for b in pred["buckets"]] == [["p1", "p2", "p3"], ["p4", "p5"], ["p6", "p7"]]  # easiest first
    for b, group in zip(pred["buckets"], [alphas[1:4], alphas[4:6], alphas[6:]]):
        assert b["fit"]["k"] == pytest.approx(0.3, rel=1e-3) and b["predicted"] == pytest.approx(np.mean(group), rel=1e-3)
    assert pred["overall"]["predicted"] == pytest.approx(np.mean(alphas[1:]), rel=1e-3)

    # the target trains (with another config first), then is measured on the law: verification
    (t_runs, t_measured) = fake_runs(tmp_path / "t", [1e12], alphas, k=0.3)
    target.mkdir()
    (target / "done.json").write_text(json.dumps({"flops": 1e12}))
    mc = tc.model_config().to_dict()
    (target / "config.json").write_text(json.dumps({"train": {"depth": 9, "lr": 0.1}, "model": mc}))
    with pytest.raises(RegistryError, match="differs from the registered one"):
        K.verify_capability(tmp_path / "capability.json", target, measured=t_measured[str(t_runs[0])])
    (target / "config.json").write_text(json.dumps({"train": {"depth": 9}, "model": mc}))  # older: fewer fields
    res = K.verify_capability(tmp_path / "capability.json", target, measured=t_measured[str(t_runs[0])],
                              out=tmp_path / "verify.json", png=tmp_path / "fig2.png", log=lambda s: None)
    assert all(abs(b["rel_error"]) < 1e-3 for b in res["buckets"] + [res["overall"]])
    assert json.loads((tmp_path / "verify.json").read_text()) == res
    assert (tmp_path / "fig2.png").stat().st_size > 10_000
    with pytest.raises(RegistryError, match="problem set differs"):  # the target must be measured on the same set
        K.verify_capability(tmp_path / "capability.json", target, problems=K.build_problems()[:2])


def test_fit_models_are_measured_smallest_first_on_what_every_smaller_one_solved(tmp_path, monkeypatch):
    """The cascade samples each fit model only on problems all smaller ones solved, and gives the same kept
    problems and buckets as measuring every model on every problem; verification samples only the kept ones."""
    alphas = [0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0]
    runs, full = fake_runs(tmp_path, [1e10, 1e11, 3e11], alphas, k=0.3)
    full[str(runs[0])]["p8"]["passed"] = 0  # unsolved by the smallest model: never sampled on the others
    full[str(runs[2])]["p7"]["passed"] = 0
    problems = [dict(task_id=f"p{j}") for j in range(len(alphas))]
    asked = []

    def fake_measure(rs, ps, log=print, **kw):
        asked.append((Path(rs[0]).name, [p["task_id"] for p in ps]))
        return {str(rs[0]): {p["task_id"]: full[str(rs[0])][p["task_id"]] for p in ps}}

    monkeypatch.setattr(K, "measure", fake_measure)
    monkeypatch.setattr(K, "problem_set_hash", lambda ps: "these problems")
    tc = TrainConfig(depth=9)
    rec = K.predict_capability(tmp_path / "cascade.json", runs[::-1], tmp_path / "target", tc.identity(), 1e12,
                               problems=problems, n_buckets=3, log=lambda s: None)
    ids = [f"p{j}" for j in range(9)]
    assert asked == [("r0", ids), ("r1", ids[:8]), ("r2", ids[:8])]
    ref = K.predict_capability(tmp_path / "full.json", runs[::-1], tmp_path / "target", tc.identity(), 1e12,
                               measured=full, n_buckets=3, log=lambda s: None)
    assert rec["prediction"]["buckets"] == ref["prediction"]["buckets"] and rec["prediction"]["problems_kept"] == 7
    assert rec["prediction"]["problems_total"] == 9
    target = tmp_path / "target"
    target.mkdir()
    (target / "done.json").write_text(json.dumps({"flops": 1e12}))
    (target / "config.json").write_text(json.dumps({"train": {"depth": 9}, "model": tc.model_config().to_dict()}))
    full[str(target)] = {p: dict(n=50, passed=10) for p in ids}
    asked.clear()
    monkeypatch.setattr(K, "measure", lambda rs, ps, **kw: (asked.append([p["task_id"] for p in ps]), {str(target): {
        p["task_id"]: full[str(target)][p["task_id"]] for p in ps}})[1])
    K.verify_capability(tmp_path / "cascade.json", target, problems=problems, log=lambda s: None)
    assert asked == [ids[:7]]
