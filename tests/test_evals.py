"""The eval framework: unchanged specs of the pinned openai/evals wheel run end to end against a local checkpoint and
against an OpenAI-compatible HTTP endpoint (a test-only server that answers from the samples' ideals, and that
fails with 429/500 and stalls at first, so retries and timeouts are exercised); template semantics; the recorder's
resume; a user registry with a custom eval class."""
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nanogpt4.cli import main as cli
from nanogpt4.evals import completion as CF, recorder, registry as R, templates as T
from nanogpt4.evals.run import run_eval, select

WHEEL_SPECS = {  # 22 unchanged specs of evals==3.0.1.post1, five templates
    "Match": ["test-time-zone-conversion", "algebra-word-problems", "rock-climbing", "multi-step-equations",
              "polish-syllable-count", "chinese_famous_novel"],
    "Includes": ["test-includes", "test-includes-ignore-case", "japanese_prime_minister", "thirty_six_stratagems",
                 "chinese-lantern-riddles"],
    "FuzzyMatch": ["test-fuzzy-match", "counterfactual-reasoning-fuzzy-match", "finance", "russian-rhyme"],
    "JsonMatch": ["icelandic-inflection-easy"],
    "ModelBasedClassify": ["joke-fruits", "joke-fruits-likert", "joke-fruits-meta", "logic-fact", "diversity",
                           "joke-animals-vs-fruits"],
}
N = 3  # samples per spec


@pytest.fixture(scope="module")
def reg():
    return R.default_registry()


@pytest.mark.network
def test_wheel_specs_resolve_to_the_templates(reg):
    for cls, names in WHEEL_SPECS.items():
        for name in names:
            spec = reg.get_eval(name)
            assert spec.cls.endswith(":" + cls) and T.eval_class(spec.cls).__name__ == cls
            assert reg.load_samples(spec.args["samples_jsonl"], spec.root)
    assert "logic-fact" in reg.get_eval_set("test-modelgraded")
    with pytest.raises(R.RegistryError, match="no eval"):
        reg.get_eval("no-such-eval")
    with pytest.raises(R.RegistryError, match="not found"):  # a spec of the wheel whose data the wheel lacks
        reg.load_samples(reg.get_eval("stock-options-iron-butteryfly-spread").args["samples_jsonl"])


def check_record(path, n):
    spec, events, final = recorder.read(path)
    assert spec["samples"] == n and len([e for e in events if e["type"] == "sample"]) == n
    for e in events:
        assert {"sample_id", "seed", "data"} <= set(e) and "prompt" in e["data"] and "sampled" in e["data"]
    return final


@pytest.mark.network
def test_wheel_specs_against_a_local_checkpoint(reg, local_run, tmp_path):
    fn = CF.LocalCompletion(local_run)
    for cls, names in WHEEL_SPECS.items():
        for name in names:
            spec = reg.get_eval(name)
            report = run_eval(spec, reg, [fn], tmp_path / f"{name}.jsonl", max_samples=N, threads=4, log=lambda s: 0)
            final = check_record(tmp_path / f"{name}.jsonl", N)
            assert final == report and report["errors"] == 0 and report["samples"] == N
            data = [e["data"] for e in recorder.read(tmp_path / f"{name}.jsonl")[1] if e["type"] == "sample"]
            if cls == "ModelBasedClassify":  # the report's metrics are those of the recorded samples
                assert {k: v for k, v in report.items() if k.startswith("counts/")} == \
                    {f"counts/{c}": n for c, n in Counter(d["choice"] for d in data).items()}
            else:
                assert report["accuracy"] == pytest.approx(sum(d["correct"] for d in data) / N)


class FakeOpenAI(BaseHTTPRequestHandler):
    """Test-only OpenAI-compatible server: answers a known prompt with its sample's ideal, a grading prompt with
    the first choice it offers, anything else with fixed text. Its first requests fail (429, 500) or stall."""
    answers, script, lock, requests = {}, [], threading.Lock(), []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            FakeOpenAI.requests.append(self.path)
            action = FakeOpenAI.script.pop(0) if FakeOpenAI.script else "ok"
        if action == "stall":
            time.sleep(1.0)
        if action.isdigit():  # an HTTP error status
            self.send_response(int(action))
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"message": "try again", "type": "server_error"}}).encode())
            return
        prompt = body["messages"] if "messages" in body else body["prompt"]
        key = json.dumps(prompt, sort_keys=True)
        text = FakeOpenAI.answers.get(key)
        if text is None:
            flat = json.dumps(prompt)
            m = re.search(r'single choice from \\"([^\\"]+)\\"', flat)
            text = f"Some reasoning.\n{m.group(1)}" if m else "I do not know."
        choice = dict(index=0, finish_reason="stop")
        if "messages" in body:
            choice.update(message=dict(role="assistant", content=text))
            obj = "chat.completion"
        else:
            choice.update(text=text, logprobs=None)
            obj = "text_completion"
        out = dict(id="x", object=obj, created=0, model=body["model"], choices=[choice],
                   usage=dict(prompt_tokens=1, completion_tokens=1, total_tokens=2))
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/v1"
    srv.shutdown()


@pytest.mark.network
def test_wheel_specs_against_an_http_endpoint(reg, server, tmp_path):
    FakeOpenAI.answers.clear()
    for names in WHEEL_SPECS.values():
        for name in names:
            spec = reg.get_eval(name)
            for _, s in select(reg.load_samples(spec.args["samples_jsonl"], spec.root), N):
                ideal = s.get("ideal")
                if ideal is not None:
                    FakeOpenAI.answers[json.dumps(s["input"] if CF.is_chat(s["input"]) else
                                                  [{"role": "system", "content": s["input"]}], sort_keys=True)] = \
                        ideal[0] if isinstance(ideal, list) else ideal
    FakeOpenAI.script[:] = ["429", "500", "stall"]
    FakeOpenAI.requests.clear()
    fn = CF.HTTPCompletion(server, "fake-model", api_key="sk-test", timeout=0.5, backoff_s=0.01)
    for cls, names in WHEEL_SPECS.items():
        for name in names:
            spec = reg.get_eval(name)
            report = run_eval(spec, reg, [fn], tmp_path / f"{name}.jsonl", max_samples=N, threads=4, log=lambda s: 0)
            check_record(tmp_path / f"{name}.jsonl", N)
            assert report["errors"] == 0
            if cls == "ModelBasedClassify":  # the grader always picks the first choice offered
                mg = reg.get_modelgraded_spec(spec.args["modelgraded_spec"])
                first = T.choice_strings(mg["choice_strings"], 4)[0]
                assert report[f"counts/{first}"] == N
            else:  # the endpoint answers every sample with its ideal
                assert report["accuracy"] == 1.0, name
    assert FakeOpenAI.script == []  # the failures happened, and were retried through


def test_http_429_is_retried_until_max_retries(server):
    FakeOpenAI.script[:] = ["429"] * 10
    fn = CF.HTTPCompletion(server, "m", timeout=1, max_retries=2, backoff_s=0.001)
    FakeOpenAI.requests.clear()
    with pytest.raises(Exception, match="429|try again"):
        fn("hi")
    assert len(FakeOpenAI.requests) == 3  # one try + two retries, then the error surfaces
    FakeOpenAI.script[:] = []
    assert fn("hi").get_completions() == ["I do not know."]
    text_api = CF.HTTPCompletion(server, "m", api="completions", timeout=1)
    assert text_api([{"role": "user", "content": "hi"}]).completions == ["I do not know."]
    assert FakeOpenAI.requests[-1] == "/v1/completions"


@pytest.mark.parametrize("status", ["400", "401", "404"])
def test_http_errors_that_are_not_transient_are_not_retried(server, status):
    FakeOpenAI.script[:] = [status] * 10
    FakeOpenAI.requests.clear()
    fn = CF.HTTPCompletion(server, "m", timeout=1, max_retries=3, backoff_s=0.5)
    t0 = time.time()
    with pytest.raises(fn.openai.APIStatusError) as err:
        fn("hi")
    assert err.value.status_code == int(status)
    assert len(FakeOpenAI.requests) == 1 and time.time() - t0 < 0.5  # one request, no backoff: it surfaces at once
    FakeOpenAI.script[:] = []


def test_template_semantics():
    assert T.fuzzy_match("The Eiffel tower!", "eiffel tower") and not T.fuzzy_match("", "x")
    assert T.f1("a red apple", ["red apple pie"]) == pytest.approx(0.8)
    assert T.json_match({"a": [1, 2]}, {"a": [1, 2]}) and not T.json_match({"a": [1]}, {"a": [1], "b": 2})
    assert not T.json_match(None, None)
    assert T.get_choice("Yes\nbecause", "classify_cot", "starts_or_endswith", ["Yes", "No"]) == "Yes"
    assert T.get_choice("No wait.\nThe answer:\nYes", "cot_classify", "starts_or_endswith", ["Yes", "No"]) == "Yes"
    assert T.get_choice("maybe", "classify", "starts_or_endswith", ["Yes", "No"]) == T.INVALID
    assert T.choice_strings("from_n_abc", 3) == ["a", "b", "c"] and T.choice_strings("ABCDE") == list("ABCDE")
    assert T.fill("{a} and {b}", a="x {y}", b=[{"role": "user", "content": "hi"}]) == "x {y} and hi"
    with pytest.raises(ValueError, match="template needs"):
        T.fill("{a} {b}", a=1)
    text, letter = T.make_abc(["p", "q", "r"], 1, __import__("random").Random(0))
    assert f"{letter}) q" in text


def test_few_shot_match_without_few_shot_jsonl_says_so(tmp_path):
    spec = R.EvalSpec("mine", "mine.v0", "evals.elsuite.basic.match:Match", {}, tmp_path)
    with pytest.raises(ValueError, match="num_few_shot needs few_shot_jsonl"):
        T.Match([Scripted(str)], R.Registry([tmp_path]), spec, samples_jsonl="s.jsonl", num_few_shot=2)


class Scripted:
    """An in-process completion function for testing the runner: answers with `answer(prompt)`."""
    name = "scripted"

    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    def __call__(self, prompt, **kw):
        self.calls += 1
        return CF.CompletionResult([self.answer(prompt)])


def test_vqa_template_matches_choices_and_asks_blind_in_text_only_mode(tmp_path):
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    sample = {"input": [{"role": "user", "content": [img, {"type": "text", "text": "What colour?"}]}],
              "ideal": "red", "choices": ["red", "dark red", "blue"]}
    spec = R.EvalSpec("v", "v.v0", "nanogpt4.evals.templates:VQA", {}, tmp_path)
    seen = []

    def answer(prompt):
        seen.append(prompt)
        return {1: "Red.", 2: "dark red it is", 3: "blue, or red", 0: "Red."}[len(seen) % 4]
    ev = T.VQA([Scripted(answer)], R.Registry([tmp_path]), spec, samples_jsonl="s.jsonl")
    rng = __import__("random").Random(0)
    recs = [ev.eval_sample(sample, rng) for _ in range(3)]
    assert [r["correct"] for r in recs] == [True, False, False]  # "dark red" is its own choice; the first said counts
    assert recs[1]["picked"] == "dark red" and seen[0][0]["content"][0] == img  # the image reaches the model
    assert ev.report(recs)["chance"] == pytest.approx(1 / 3) and ev.report(recs)["accuracy"] == pytest.approx(1 / 3)
    blind = T.VQA([Scripted(answer)], R.Registry([tmp_path]), spec, samples_jsonl="s.jsonl", text_only=True)
    blind.eval_sample(sample, rng)
    assert seen[-1] == [{"role": "user", "content": "What colour?"}]  # the same question without the image


def test_model_graded_battle_gives_each_output_to_its_own_policy():
    reg = R.Registry([R.BUILTIN])  # nanogpt4's own specs only: no wheel, no network
    spec = R.EvalSpec("b", "b.v0", "evals.elsuite.modelgraded.classify:ModelBasedClassify", {}, R.BUILTIN)
    msgs = [{"role": "user", "content": "Name a fruit."}]
    a, b, grader = Scripted(lambda p: "apple"), Scripted(lambda p: "banana"), Scripted(lambda p: "Yes")
    rec = T.ModelBasedClassify([a, b, grader], reg, spec, modelgraded_spec="battle-chat").eval_sample(
        {"input1": msgs, "input2": msgs}, __import__("random").Random(0))
    assert rec["answers"] == {"completion1": "apple", "completion2": "banana"} and a.calls == b.calls == 1
    text = rec["prompt"][-1]["content"]
    assert "Name a fruit." in text and text.index("Response 1: apple") < text.index("Response 2: banana")
    assert rec["choice"] == "Yes" and rec["score"] == 1.0
    rec = T.ModelBasedClassify([a, grader], reg, spec, modelgraded_spec="battle-chat").eval_sample(
        {"input1": msgs, "input2": msgs}, __import__("random").Random(0))  # one policy answers both, as before
    assert rec["answers"] == {"completion1": "apple", "completion2": "apple"} and b.calls == 1


@pytest.mark.network
def test_recorder_resumes_without_redoing_samples(reg, tmp_path):
    spec = reg.get_eval("algebra-word-problems")
    samples = reg.load_samples(spec.args["samples_jsonl"], spec.root)
    ideal = {json.dumps(s["input"]): s["ideal"] for s in samples}
    failures = {"left": 3}
    lock = threading.Lock()

    def answer(prompt):
        with lock:
            failures["left"] -= 1
            if failures["left"] >= 0:  # the first three calls fail
                raise RuntimeError("flaky")
        return ideal[json.dumps(prompt)]

    fn, out = Scripted(answer), tmp_path / "rec.jsonl"
    first = run_eval(spec, reg, [fn], out, log=lambda s: 0)
    assert first["errors"] == 3 and first["samples"] == len(samples) - 3
    with open(out, "a") as f:
        f.write('{"type": "sample", "sample_id": "torn')  # a crash mid-line
    fn2 = Scripted(answer)
    second = run_eval(spec, reg, [fn2], out, log=lambda s: 0)
    assert fn2.calls == 3  # only the failed ones ran again
    assert second["errors"] == 0 and second["accuracy"] == 1.0 and second["samples"] == len(samples)
    assert recorder.read(out)[2] == second
    with pytest.raises(recorder.RecordError, match="another run"):
        run_eval(spec, reg, [fn2], out, seed=1, log=lambda s: 0)
    header = recorder.read(out)[0]
    recorder.Recorder(out, dict(header, git_commit="a later commit"))  # newer code resumes the same run


@pytest.mark.network
def test_a_stalled_sample_does_not_hang_the_run(reg, tmp_path):
    spec = reg.get_eval("algebra-word-problems")
    gate = threading.Event()
    slow = Scripted(lambda p: (gate.wait(5), "x")[1])
    t0 = time.time()
    report = run_eval(spec, reg, [slow], tmp_path / "r.jsonl", threads=2, sample_timeout=0.3, log=lambda s: 0)
    gate.set()
    assert time.time() - t0 < 3 and report["errors"] > 0


@pytest.mark.network
def test_user_registry_custom_class_and_cli(tmp_path, monkeypatch, capsys, local_run):
    root = tmp_path / "myreg"
    (root / "evals").mkdir(parents=True)
    (root / "data" / "mine").mkdir(parents=True)
    rows = [{"input": [{"role": "system", "content": "Say hello."}], "ideal": "hello"},
            {"input": "Say bye.", "ideal": ["bye", "goodbye"]}]
    (root / "data" / "mine" / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_evals.py").write_text(
        "from nanogpt4.evals.templates import Eval\n"
        "class Length(Eval):\n"
        "    def eval_sample(self, sample, rng):\n"
        "        s = self.complete(sample['input'], max_tokens=4)\n"
        "        return dict(prompt=sample['input'], sampled=s, correct=len(s) >= 0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (root / "evals" / "mine.yaml").write_text(
        "mine:\n  id: mine.dev.v0\nmine.dev.v0:\n  class: my_evals:Length\n  args:\n    samples_jsonl: mine/s.jsonl\n"
        "test-match:\n  id: test-match.s1.simple-v0\n"  # overrides the wheel's spec of that name
        "test-match.s1.simple-v0:\n  class: evals.elsuite.basic.match:Match\n  args:\n    samples_jsonl: mine/s.jsonl\n")
    out = tmp_path / "out"
    cli(["eval", "run", "mine", "test-match", "--model", str(local_run), "--registry", str(root), "--out", str(out)])
    printed = capsys.readouterr().out
    assert '"samples": 2' in printed and "mine.dev.v0" in printed
    records = sorted(out.glob("*.jsonl"))
    assert len(records) == 2
    cli(["eval", "show", str(records[0]), "--limit", "1"])
    shown = capsys.readouterr().out
    assert "--- prompt" in shown and "final report" in shown
    reg = R.Registry([R.wheel_registry(), root])
    assert reg.get_eval("test-match").root == root


def test_a_timed_out_eval_cancels_the_generation_it_abandoned(local_run, tmp_path):
    """After a sample timeout the abandoned samples' generation stops at once instead of running (and holding the
    model) into the evals after it."""
    root = tmp_path / "reg"
    (root / "evals").mkdir(parents=True)
    (root / "data").mkdir()
    rows = [{"input": [{"role": "user", "content": f"Count to {i}."}], "ideal": "x"} for i in range(6)]
    (root / "data" / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "evals" / "slow.yaml").write_text("slow:\n  id: slow.v0\nslow.v0:\n  class: evals.elsuite.basic.match:Match\n"
                                               "  args:\n    samples_jsonl: s.jsonl\n    max_tokens: 30\n")
    reg = R.Registry([root])
    fn = CF.LocalCompletion(local_run, max_rows=2)
    step = fn.engine.step
    fn.engine.step = lambda: (time.sleep(0.05), step())  # a slow model: 6 samples × 30 tokens take seconds
    report = run_eval(reg.get_eval("slow"), reg, [fn], tmp_path / "r.jsonl", threads=6, sample_timeout=0.3,
                      log=lambda s: 0)
    assert report["errors"] == 6
    deadline = time.time() + 2
    while (fn.engine.rows or fn.engine.pending) and time.time() < deadline:
        time.sleep(0.01)
    assert not fn.engine.rows and not fn.engine.pending  # nothing left running or queued
    fn.engine.step = step
    t0 = time.time()
    assert fn("The cat", max_tokens=3).completions is not None and time.time() - t0 < 2  # the model is free


def test_a_prompt_cut_to_fit_is_counted_in_the_record(local_run, tmp_path):
    root = tmp_path / "reg"
    (root / "evals").mkdir(parents=True)
    (root / "data").mkdir()
    rows = [{"input": "The cat sees the dog. " * 40, "ideal": "x"}, {"input": "Short.", "ideal": "x"}]
    (root / "data" / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "evals" / "long.yaml").write_text("long:\n  id: long.v0\nlong.v0:\n  class: evals.elsuite.basic.match:Match\n"
                                               "  args:\n    samples_jsonl: s.jsonl\n    max_tokens: 8\n")
    reg = R.Registry([root])
    report = run_eval(reg.get_eval("long"), reg, [CF.LocalCompletion(local_run)], tmp_path / "r.jsonl", log=lambda s: 0)
    data = {e["sample_id"]: e["data"] for e in recorder.read(tmp_path / "r.jsonl")[1] if e["type"] == "sample"}
    assert data["long.v0.0"]["prompt_tokens_cut"] > 100 and "prompt_tokens_cut" not in data["long.v0.1"]
    assert report["samples_cut"] == 1


def test_local_completion_batches_match_single_requests(local_run):
    fn = CF.LocalCompletion(local_run, max_rows=8)
    prompts = ["def add(a, b):", "The cat", [{"role": "system", "content": "Hi"}, {"role": "user", "content": "Name?"}],
               "x = 1\ny ="]
    alone = [fn(p, max_tokens=10).completions[0] for p in prompts]
    results = [None] * len(prompts)

    def call(i):
        results[i] = fn(prompts[i], max_tokens=10).completions[0]
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    a = fn("The cat", max_tokens=8, temperature=1.0, seed=7, n=2, logprobs=True)
    b = fn("The cat", max_tokens=8, temperature=1.0, seed=7, n=2)
    assert a.completions == b.completions and len(a.logprobs) == 2
    assert all(lp <= 0 for row in a.logprobs for _, lp in row)


@pytest.mark.network
def test_wheel_multiple_choice_specs_read_pinned_copies_and_local_hf_datasets(reg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    letters = Scripted(lambda p: "B")
    for name in ["mmlu-professional-law", "mmlu-high-school-psychology", "hellaswag"]:  # unchanged wheel specs, hf:// datasets
        spec = reg.get_eval(name)
        assert spec.cls.endswith("multiple_choice:MultipleChoice") and spec.args["dataset"].startswith("hf://")
        report = run_eval(spec, reg, [letters], tmp_path / f"{name}.jsonl", max_samples=40, log=lambda s: 0)
        assert report["errors"] == 0 and report["samples"] == 40 and 0.05 < report["accuracy"] < 0.6
    local = tmp_path / "my_mc"  # a local Hugging Face-style dataset directory, through `datasets`
    local.mkdir()
    rows = [{"question": f"{i} + 1 = ?", "choices": [str(i + 1), str(i), str(i + 2), "7"], "answer": 0} for i in range(8)]
    (local / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tmp_path / "reg"
    (root / "evals").mkdir(parents=True)
    (root / "evals" / "mc.yaml").write_text(f"mc:\n  id: mc.v0\nmc.v0:\n  class: evals.elsuite.multiple_choice:MultipleChoice\n"
                                            f"  args:\n    dataset: hf://{local}?split=train\n")
    reg2 = R.Registry([root])
    solver = Scripted(lambda p: next(L for L in "ABCD" if re.search(rf"{L}\) (\d+)$", p, re.M) and
                                     int(re.search(rf"{L}\) (\d+)$", p, re.M).group(1)) ==
                                     int(re.search(r"(\d+) \+ 1", p).group(1)) + 1))
    report = run_eval(reg2.get_eval("mc"), reg2, [solver], tmp_path / "mc.jsonl", log=lambda s: 0)
    assert report["accuracy"] == 1.0 and report["samples"] == 8
