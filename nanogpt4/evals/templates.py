"""Eval templates with openai/evals' semantics: Match, Includes, FuzzyMatch, JsonMatch, MultipleChoice, VQA
(visual questions) and ModelBasedClassify (model-graded classification with `classify`, `classify_cot` and `cot_classify`).

An eval gets its spec's `args` as keyword arguments (an argument a template does not know is an error, not
ignored). `eval_sample(sample, rng)` returns the sample's record — prompt, sampled text and its metrics — and
`report(records)` aggregates them. A spec's class "evals.elsuite.basic.match:Match" maps to the template here of the
same name; any other "module:Class" is imported, so custom evals plug in by import path.
"""
import importlib
import json
import math
import re
import string
import threading
from collections import Counter

import numpy as np

from ..chat import is_chat, to_plain_text as chat_to_text


CUT = threading.local()  # prompt tokens the completion function cut to fit, per sample (run.py records them)


class Eval:
    default_max_tokens = 256  # answer budget when the spec sets no max_tokens

    def __init__(self, completion_fns, registry, spec, samples_jsonl=None, max_tokens=None):
        self.completion_fns, self.completion_fn = completion_fns, completion_fns[0]
        self.registry, self.spec, self.samples_jsonl = registry, spec, samples_jsonl
        self.max_tokens = max_tokens or self.default_max_tokens

    def samples(self):
        if self.samples_jsonl is None:
            raise ValueError(f"{self.spec.key}: no samples_jsonl")
        return self.registry.load_samples(self.samples_jsonl, self.spec.root)

    def completions(self, prompt, **kw):
        """Every completion of one request to the eval's completion function; prompt tokens it had to cut are
        counted for the sample's record (run.py)."""
        res = self.completion_fn(prompt=prompt, **kw)
        CUT.tokens = getattr(CUT, "tokens", 0) + res.info.get("truncated", 0)
        return res.get_completions()

    def complete(self, prompt, **kw):
        return self.completions(prompt, **kw)[0]

    def eval_sample(self, sample, rng) -> dict:
        raise NotImplementedError

    def report(self, records) -> dict:
        return accuracy_report([r["correct"] for r in records])


def accuracy_report(correct, seed=0):
    """Accuracy, its binomial standard error and openai/evals' bootstrap standard deviation (1,000 resamples)."""
    x = np.asarray(correct, dtype=float)
    if not len(x):
        return dict(accuracy=float("nan"), stderr=float("nan"), bootstrap_std=float("nan"), n=0)
    boot = np.random.default_rng(seed).choice(x, (1000, len(x))).mean(1)
    return dict(accuracy=float(x.mean()), stderr=float(math.sqrt(x.mean() * (1 - x.mean()) / len(x))),
                bootstrap_std=float(boot.std()), n=len(x))


def check_sample(sample, *keys):
    if not isinstance(sample, dict) or any(k not in sample for k in keys):
        raise ValueError(f"a sample needs keys {keys}, got {sorted(sample) if isinstance(sample, dict) else sample!r}")


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class Match(Eval):
    """Correct when the sampled text starts with an ideal answer (evals' record_and_check_match)."""

    default_max_tokens = 500

    def __init__(self, *a, num_few_shot=0, few_shot_jsonl=None, **kw):
        super().__init__(*a, **kw)
        if num_few_shot and few_shot_jsonl is None:
            raise ValueError("num_few_shot needs few_shot_jsonl")
        self.num_few_shot = num_few_shot
        self.few_shot = self.registry.load_samples(few_shot_jsonl, self.spec.root) if num_few_shot else []

    def eval_sample(self, sample, rng):
        check_sample(sample, "input", "ideal")
        prompt = sample["input"]
        if self.num_few_shot:
            if not is_chat(prompt):
                raise ValueError("few-shot Match needs chat prompts")
            prompt = prompt[:-1] + [m for s in self.few_shot[:self.num_few_shot] for m in s["sample"]] + prompt[-1:]
        sampled = self.complete(prompt, temperature=0.0, max_tokens=self.max_tokens)
        picked = next((o for o in as_list(sample["ideal"]) if sampled.startswith(o)), None)
        return dict(prompt=prompt, sampled=sampled, expected=sample["ideal"], picked=picked, correct=picked is not None)


class Includes(Eval):
    """Correct when an ideal answer occurs in the sampled text."""

    def __init__(self, *a, ignore_case=False, **kw):
        super().__init__(*a, **kw)
        self.ignore_case = ignore_case

    def eval_sample(self, sample, rng):
        check_sample(sample, "input", "ideal")
        sampled = self.complete(sample["input"], max_tokens=self.max_tokens)
        norm = (lambda s: s.lower()) if self.ignore_case else (lambda s: s)
        hit = any(norm(i) in norm(sampled) for i in as_list(sample["ideal"]))
        return dict(prompt=sample["input"], sampled=sampled, expected=sample["ideal"], correct=hit)


def normalize(s):
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def fuzzy_match(a, b):
    a, b = normalize(a), normalize(b)
    return a == b if not a or not b else (a in b or b in a)


def f1(prediction, answers):
    """Best token-level F1 of prediction against any answer (SQuAD/DROP style)."""
    best = 0.0
    for ans in answers:
        p, g = normalize(prediction).split(), normalize(ans).split()
        same = sum((Counter(p) & Counter(g)).values())
        if same:
            prec, rec = same / len(p), same / len(g)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


class FuzzyMatch(Eval):
    """Correct when, normalised, the sampled text contains an ideal answer or is contained in one; also token F1."""
    default_max_tokens = 100

    def eval_sample(self, sample, rng):
        check_sample(sample, "input", "ideal")
        answers = as_list(sample["ideal"])
        sampled = self.complete(sample["input"], temperature=0.0, max_tokens=self.max_tokens)
        return dict(prompt=sample["input"], sampled=sampled, expected=answers,
                    correct=any(fuzzy_match(sampled, a) for a in answers), f1=f1(sampled, answers))

    def report(self, records):
        return dict(super().report(records), f1_score=float(np.mean([r["f1"] for r in records])) if records else 0.0)


def without_images(prompt):
    """A chat prompt with its image parts removed (the text-only baseline of a visual question)."""
    from ..chat import text_of
    return [dict(m, content=text_of(m["content"])) for m in prompt] if is_chat(prompt) else prompt


class VQA(Eval):
    """Visual question answering: a chat prompt whose content parts hold images (openai/evals' vision samples:
    {"type": "image_url", "image_url": {"url": data URL or path}}) and the question. Correct when the normalised
    answer equals a normalised ideal one; with `choices` in the sample (multiple choice), the answer counts as the
    first choice it starts with. `text_only`: the images are removed, the same questions asked blind (the
    text-only baseline). The report adds chance: the mean of 1/len(choices)."""
    default_max_tokens = 8

    def __init__(self, *a, text_only=False, **kw):
        super().__init__(*a, **kw)
        self.text_only = text_only

    def eval_sample(self, sample, rng):
        check_sample(sample, "input", "ideal")
        prompt = without_images(sample["input"]) if self.text_only else sample["input"]
        sampled = self.complete(prompt, temperature=0.0, max_tokens=self.max_tokens)
        said, ideal = normalize(sampled), [normalize(str(i)) for i in as_list(sample["ideal"])]
        choices = [normalize(str(c)) for c in sample.get("choices") or []]
        if choices:
            said = next((c for c in sorted(choices, key=len, reverse=True) if said.split()[:len(c.split())] == c.split()),
                        said)
        return dict(prompt=prompt, sampled=sampled, expected=sample["ideal"], picked=said, correct=said in ideal,
                    choices=sample.get("choices"), chance=1 / len(choices) if choices else None)

    def report(self, records):
        chance = [r["chance"] for r in records if r.get("chance") is not None]
        return dict(super().report(records), chance=float(np.mean(chance)) if chance else None)


def json_match(sampled, correct):
    """Structural equality of decoded JSON: every key of either dict, lists element by element."""
    if sampled is None or correct is None:
        return False
    if isinstance(correct, dict) or isinstance(sampled, dict):
        return isinstance(sampled, dict) and isinstance(correct, dict) and all(
            json_match(sampled.get(k), correct.get(k)) for k in set(sampled) | set(correct))
    if isinstance(correct, list) or isinstance(sampled, list):
        return isinstance(sampled, list) and isinstance(correct, list) and len(sampled) == len(correct) and all(
            json_match(s, c) for s, c in zip(sampled, correct))
    return sampled == correct


class JsonMatch(Eval):
    default_max_tokens = 512

    def eval_sample(self, sample, rng):
        check_sample(sample, "input", "ideal")
        sampled = self.complete(sample["input"], temperature=0.0, max_tokens=self.max_tokens)
        try:
            got = json.loads(sampled)
        except ValueError:
            got = None
        ok = any(json_match(got, json.loads(c)) for c in as_list(sample["ideal"]))
        return dict(prompt=sample["input"], sampled=sampled, expected=sample["ideal"], correct=ok)


def make_abc(answers, correct_idx, rng):
    """Options shuffled by the sample's rng and lettered "A) …"; returns (text, correct letter)."""
    order = list(range(len(answers)))
    rng.shuffle(order)
    letters = string.ascii_uppercase[:len(answers)]
    text = "\n".join(f"{letters[i]}) {answers[j]}" for i, j in enumerate(order))
    return text, letters[order.index(correct_idx)]


class MultipleChoice(Eval):
    """All options shown, lettered, the model asked for the letter (the report's multiple-choice protocol).
    `dataset` is an hf:// URL (openai/evals' hellaswag / hendrycks_test) or a registry JSONL path of samples
    {"question", "answers", "label"}."""

    def __init__(self, *a, dataset=None, instructions="", **kw):
        super().__init__(*a, **kw)
        self.dataset, self.instructions = dataset, instructions or ""

    def samples(self):
        rows = self.registry.load_samples(self.dataset or self.samples_jsonl, self.spec.root)
        out = []
        for r in rows:
            if "ctx" in r and "endings" in r:  # hellaswag
                out.append(dict(question=r["ctx"], answers=list(r["endings"]), label=int(r["label"])))
            elif "choices" in r and "answer" in r:  # hendrycks_test (MMLU)
                out.append(dict(question=r["question"], answers=list(r["choices"]), label=int(r["answer"])))
            else:
                check_sample(r, "question", "answers", "label")
                out.append(dict(question=r["question"], answers=list(r["answers"]), label=int(r["label"])))
        return out

    def eval_sample(self, sample, rng):
        options, letter = make_abc(sample["answers"], sample["label"], rng)
        prompt = (self.instructions + "\nPlease answer with the letter of the correct answer.\n\n"
                  + sample["question"] + "\n" + options)
        sampled = self.complete(prompt, temperature=0.0, max_tokens=1)
        return dict(prompt=prompt, sampled=sampled, expected=letter, correct=sampled.startswith(letter))


ANSWER_PROMPTS = {  # openai/evals' classify_utils, so model-graded specs grade exactly as there
    "classify": "Answer the question by printing only a single choice from {choices} (without quotes or punctuation) "
                "corresponding to the correct answer with no other text.",
    "classify_cot": "First, answer by printing a single choice from {choices} (without quotes or punctuation) "
                    "corresponding to the correct answer. Then, from the next line, explain your reasonings step by "
                    "step.",
    "cot_classify": "First, write out in a step by step manner your reasoning to be sure that your conclusion is "
                    "correct. Avoid simply stating the correct answer at the outset. Then print only a single choice "
                    "from {choices} (without quotes or punctuation) on its own line corresponding to the correct "
                    "answer. At the end, repeat just the answer by itself on a new line.\n\nReasoning:",
}
INVALID = "__invalid__"
MATCH_FNS = {"include": lambda line, c: c in line, "exact": lambda line, c: line == c,
             "endswith": lambda line, c: line.endswith(c),
             "starts_or_endswith": lambda line, c: line.startswith(c) or line.endswith(c)}


def fill(template, allow_missing=False, **values):
    """str.format with only the fields the template names; chat-message values are rendered as text first.
    Braces inside values are kept literally."""
    values = {k: chat_to_text(v, for_completion=False) if is_chat(v) else v for k, v in values.items()}
    keys = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [k for k in keys if k not in values]
    if missing and not allow_missing:
        raise ValueError(f"template needs {missing}; have {sorted(values)}")
    return template.format(**{k: values.get(k, "{" + k + "}") for k in keys})


def fill_prompt(prompt, **values):
    if is_chat(prompt):
        return [dict(m, content=fill(m["content"], **values)) if "content" in m else dict(m) for m in prompt]
    return fill(prompt, **values)


def choice_strings(spec_choices, n=None):
    if spec_choices == "from_n":
        return [str(i + 1) for i in range(n)]
    if spec_choices in ("from_n_abc", "from_n_ABC"):
        letters = string.ascii_lowercase if spec_choices.endswith("abc") else string.ascii_uppercase
        return [letters[i % 26] for i in range(n)]
    return list(spec_choices)  # a list, or a string of one-character choices ("ABCDE")


def get_choice(text, eval_type, match_fn, choices):
    """The first line (the last for cot_classify) that names a choice, punctuation removed; else __invalid__."""
    lines = text.strip().split("\n")
    if eval_type.startswith("cot_classify"):
        lines = lines[::-1]
    for line in lines:
        line = "".join(c for c in line.strip() if c not in string.punctuation)
        for c in choices if line else []:
            if MATCH_FNS[match_fn](line, c):
                return c
    return INVALID


class ModelBasedClassify(Eval):
    """The completion function answers each sample; the last completion function (the grader) classifies the
    answer with the model-graded spec's prompt, and the choice is scored with the spec's choice_scores.

    With two or more policies (every completion function but the grader) and multicomp_n 1, the spec's k-th
    input_outputs entry is answered by policies[k % len(policies)]: a battle between models (battle-chat). One
    policy answers every entry."""

    def __init__(self, *a, modelgraded_spec, modelgraded_spec_args=None, sample_kwargs=None, eval_kwargs=None,
                 multicomp_n=1, eval_type=None, match_fn=None, metaeval=False, **kw):
        super().__init__(*a, **kw)
        self.grader = self.completion_fns[-1]
        self.policies = self.completion_fns[:-1] or self.completion_fns
        self.mg = self.registry.get_modelgraded_spec(modelgraded_spec)
        self.mg_args = modelgraded_spec_args or {}
        self.sample_kwargs = dict(dict(max_tokens=1024), **(sample_kwargs or {}))
        self.eval_kwargs = dict(dict(max_tokens=1024), **(eval_kwargs or {}))
        self.n = len(self.policies) if multicomp_n == "from_models" else int(multicomp_n)
        self.eval_type = eval_type or self.mg.get("eval_type") or "classify"
        self.match_fn = match_fn or "starts_or_endswith"
        self.metaeval = metaeval
        self.choices = choice_strings(self.mg["choice_strings"], self.n)

    def policy_answer(self, prompt, rng, k=0):
        """The answer to the spec's k-th input: policies[k % len(policies)]'s, or n of them, joined."""
        seed = rng.randrange(2 ** 31)  # sampled answers (temperature > 0) are reproducible per sample
        if self.n <= 1:
            return self._sample(self.policies[k % len(self.policies)], prompt, seed)
        outs = [self._sample(self.policies[i % len(self.policies)], prompt, seed + i) for i in range(self.n)]
        letters = string.ascii_lowercase, string.ascii_uppercase
        return "".join(fill(self.mg["output_template"], allow_missing=True, i=i + 1, i_abc=letters[0][i % 26],
                            i_ABC=letters[1][i % 26], output=o, n=self.n) for i, o in enumerate(outs)).strip()

    def _sample(self, fn, prompt, seed):
        return self._first(fn, prompt, **dict(dict(temperature=0.0, seed=seed), **self.sample_kwargs))

    @staticmethod
    def _first(fn, prompt, **kw):
        """fn's first completion; prompt tokens it cut to fit are counted for the record (a grader's too)."""
        res = fn(prompt=prompt, **kw)
        CUT.tokens = getattr(CUT, "tokens", 0) + res.info.get("truncated", 0)
        return res.get_completions()[0]

    def eval_sample(self, sample, rng):
        answers = {}
        for k, (inp, out) in enumerate(self.mg["input_outputs"].items()):
            if out not in sample:  # a sample may carry its completion already (meta-evaluation data)
                answers[out] = self.policy_answer(sample[inp], rng, k)
        prompt = self.mg["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if self.eval_type in ANSWER_PROMPTS:
            choices_text = " or ".join(f'"{c}"' for c in self.choices)
            prompt[-1]["content"] += "\n\n" + ANSWER_PROMPTS[self.eval_type].format(choices=choices_text)
        prompt = fill_prompt(prompt, **{"n": self.n, **answers, **sample, **self.mg_args})
        grading = self._first(self.grader, prompt, **dict(dict(temperature=0.0), **self.eval_kwargs))
        choice = get_choice(grading, self.eval_type, self.match_fn, self.choices)
        scores = self.mg.get("choice_scores")
        if scores == "from_strings":
            scores = {c: float(c) for c in self.choices}
        score = None if scores is None else (min(scores.values()) if choice == INVALID else scores[choice])
        rec = dict(prompt=prompt, sampled=grading, answers=answers, choice=choice, score=score)
        if self.metaeval:
            rec["metascore"] = choice == sample["choice"]
        return rec

    def report(self, records):
        out = {f"counts/{k}": v for k, v in Counter(r["choice"] for r in records).items()}
        scores = [r["score"] for r in records if r["score"] is not None]
        if scores:
            out.update(score=float(np.mean(scores)),
                       score_stderr=float(np.std(scores, ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0)
        if self.metaeval:
            out["metascore"] = float(np.mean([r["metascore"] for r in records]))
        out["invalid_rate"] = sum(r["choice"] == INVALID for r in records) / max(1, len(records))
        return out


TEMPLATES = {c.__name__: c for c in (Match, Includes, FuzzyMatch, JsonMatch, MultipleChoice, ModelBasedClassify)}


def eval_class(path):
    """An openai/evals class path → our template of that name; any other "module:Class" is imported."""
    module, _, name = path.partition(":")
    if module.startswith("evals.elsuite.") and name in TEMPLATES:
        return TEMPLATES[name]
    if module.startswith("evals."):
        raise ValueError(f"{path}: this openai/evals class has no template here (have {sorted(TEMPLATES)})")
    return getattr(importlib.import_module(module), name)
