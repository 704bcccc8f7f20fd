"""Capability prediction (the GPT-4 report's Figure 2): predict a big model's pass rate on code problems from
small models, register the prediction before the big model trains, verify it afterwards.

The problem set. HumanEval is far beyond models of 0.1M-7M parameters trained on a few million tokens (the main
job's 7M-parameter model passed none of its 164 problems in 10 samples each), and a log pass rate of zero cannot be
fitted. So the problems below were written for this project, HumanEval-style (a prompt, a hidden
`check(candidate)` that tests behaviour, an entry point) and calibrated for tiny base models trained on the CPython
standard library and English prose. They are far easier than HumanEval and say nothing about it.
How they were built: each entry of TEMPLATES is one task (a prompt = class or function signature + docstring, a
reference body, hidden tests) whose body is an idiom that recurs throughout the stdlib
- level 1: a one-line body the stdlib writes thousands of times (`self.name = name`, `return self._value`,
  `return True`, `return x + y`, `return len(self.items)`, `return []`, `raise NotImplementedError`, ...);
- level 2: one line that needs the right call or expression (`return self.items[index]`, `return s.lower()`, ...);
- level 3: two or more lines, conditionals or loops (two attributes set, a default for None, a counting loop, ...).
`build_problems(seed=0, variants=2)` instantiates every template `variants` times (a repeated draw counted once), with identifiers drawn with a fixed seed from small
pools (class names, attribute names, argument names, the template's own function names) and random test values.
The even instances (the first, third, …) of a one-line template whose line starts with `return`/`raise` or an
assignment become *line problems* (level 0): the prompt goes on to the end of that keyword or operator (`        return`,
`        self.name =`) and the model writes the rest of the line. Every other instance is a *body problem*: the
model writes the whole body, cut at a stop sequence or where the code dedents out of the function. That gives 96
problems: 41 line, 55 body. Why line problems: body problems also need a sense of where a function ends, and
measured here (temperature 0.8, 100 samples each) the main job's model (7M parameters, 6M tokens, val code loss
3.0 nats/token) solved 9 of the 96 problems at least once, 8 of them line problems (`raise NotImplementedError`
and `self.count += 1` in 17% of samples, most others 1-5%), and a 0.18M-parameter ladder model trained on 0.36M
tokens solved 1. The levels document intent only; the analysis buckets problems by measured difficulty.
Every reference solution passes its tests; an empty completion, a `pass` body and a ` None` line fail every one
of them (tests/test_capability.py).

The method, following the report: sample n completions per problem and model (temperature 0.8, cut at stop
sequences or where the code dedents out of the function), execute them in the sandbox, estimate each pass rate;
keep only problems that every model of the fit set solves at least once (measured smallest model first, each
model on the problems the smaller ones all solved: `measure_cascade`); split them into difficulty buckets by
the fit models' mean log pass rate; per bucket fit -E_P[log pass_rate(C)] = α·C^(-k) over the fit models' compute;
register the prediction for the target; measure the target and compare.
"""
import hashlib
import json
import math
import random
import re
import textwrap
import zlib
from pathlib import Path
from string import Template

import numpy as np

from .. import config as C
from ..runs import checkpoint_id, load as load_run, read_config
from ..common import atomic_write_json
from ..evals.execution import run_programs
from ..engine import Engine, SamplingParams, prompt_ids
from ..evals.humaneval import body_indent, completion_end, pass_at_k, program
from . import registry
from .laws import PassRateFit, fit_pass_rate

# ----------------------------------------------------------------------------- the problem set

CLASSES = ["Node", "Entry", "Record", "Item", "Handler", "Task", "Buffer", "Config", "Message", "Request", "Reader",
           "Token", "Field", "Element", "Option", "Event", "Job", "Frame", "Header", "Packet"]
ATTRS = ["name", "value", "data", "parent", "path", "key", "size", "text", "mode", "source", "target", "level",
         "label", "owner", "state", "result"]
SEQS = ["items", "values", "lines", "entries", "parts", "names", "elements", "children"]
PAIRS = [("x", "y"), ("a", "b"), ("left", "right"), ("first", "second"), ("value", "other"), ("m", "n")]
STRS = ["s", "text", "name", "line", "word", "string"]
WORDS = ["spam", "eggs", "alpha", "beta", "red", "blue", "north", "apple"]

INIT = "class $Cls:\n\n    def __init__(self, $a):\n        self._$a = $a\n\n"  # a class around a getter/setter
HOLDER = "class $Cls:\n\n    def __init__(self, $items):\n        self.$items = list($items)\n\n"
EMPTY = "class $Cls:\n\n    def __init__(self):\n        self.$items = []\n\n"
RAISES = "try:\n    {}\nexcept NotImplementedError:\n    pass\nelse:\n    assert False"

# (name, level, function names, prompt, reference body, hidden test lines); `candidate` is the entry point:
# the class for prompts that start with `class`, else the function.
TEMPLATES = [
    ("init_attr", 1, [""], "class $Cls:\n\n    def __init__(self, $a):\n", "self.$a = $a",
     ["assert candidate($v1).$a == $v1", "assert candidate('$w1').$a == '$w1'"]),
    ("init_private", 1, [""], "class $Cls:\n\n    def __init__(self, $a):\n", "self._$a = $a",
     ["assert candidate($v1)._$a == $v1", "assert candidate('$w1')._$a == '$w1'"]),
    ("init_two", 3, [""], "class $Cls:\n\n    def __init__(self, $a, $b):\n", "self.$a = $a\nself.$b = $b",
     ["obj = candidate($v1, '$w1')", "assert obj.$a == $v1 and obj.$b == '$w1'"]),
    ("getter", 1, [""], INIT + "    def get_$a(self):\n        \"\"\"Return the $a.\"\"\"\n", "return self._$a",
     ["assert candidate($v1).get_$a() == $v1", "assert candidate('$w1').get_$a() == '$w1'"]),
    ("property", 1, [""], INIT + "    @property\n    def $a(self):\n", "return self._$a",
     ["assert candidate($v1).$a == $v1", "assert candidate('$w1').$a == '$w1'"]),
    ("setter", 2, [""], INIT + "    def set_$a(self, $x):\n        \"\"\"Set the $a to $x.\"\"\"\n", "self._$a = $x",
     ["obj = candidate(0)", "obj.set_$a($v1)", "assert obj._$a == $v1"]),
    ("len", 1, [""], HOLDER + "    def __len__(self):\n", "return len(self.$items)",
     ["assert len(candidate([$v1, $v2, $v3])) == 3", "assert len(candidate([])) == 0"]),
    ("bool", 2, [""], HOLDER + "    def __bool__(self):\n", "return bool(self.$items)",
     ["assert bool(candidate([$v1])) is True", "assert bool(candidate([])) is False"]),
    ("iter", 2, [""], HOLDER + "    def __iter__(self):\n", "return iter(self.$items)",
     ["assert list(candidate([$v1, $v2])) == [$v1, $v2]", "assert list(candidate([])) == []"]),
    ("contains", 2, [""], HOLDER + "    def __contains__(self, $x):\n", "return $x in self.$items",
     ["obj = candidate([$v1, $v2])", "assert $v1 in obj and $v2 in obj", "assert $v3 not in obj"]),
    ("getitem", 2, [""], HOLDER + "    def __getitem__(self, index):\n", "return self.$items[index]",
     ["obj = candidate([$v1, $v2, $v3])", "assert obj[0] == $v1 and obj[2] == $v3 and obj[-1] == $v3"]),
    ("append", 2, ["add", "append", "push"], EMPTY + "    def $fn(self, $x):\n        \"\"\"Add $x to the $items.\"\"\"\n",
     "self.$items.append($x)", ["obj = candidate()", "obj.$fn($v1)", "obj.$fn($v2)", "assert obj.$items == [$v1, $v2]"]),
    ("clear", 2, ["clear", "reset"], EMPTY + "    def $fn(self):\n        \"\"\"Remove all $items.\"\"\"\n",
     "self.$items.clear()", ["obj = candidate()", "obj.$items.extend([$v1, $v2])", "obj.$fn()", "assert not obj.$items"]),
    ("init_list", 1, [""], "class $Cls:\n\n    def __init__(self):\n", "self.$items = []",
     ["obj = candidate()", "assert obj.$items == [] and candidate().$items is not obj.$items"]),
    ("true", 1, ["readable", "writable", "seekable"],
     "class $Cls:\n\n    def $fn(self):\n        \"\"\"Return True: this stream supports it.\"\"\"\n", "return True",
     ["assert candidate().$fn() is True"]),
    ("false", 1, ["isatty", "closed", "interactive"],
     "class $Cls:\n\n    def $fn(self):\n        \"\"\"Return False: this stream never is.\"\"\"\n", "return False",
     ["assert candidate().$fn() is False"]),
    ("zero", 1, ["tell", "position", "offset"],
     "class $Cls:\n\n    def $fn(self):\n        \"\"\"Return the position, which is always 0.\"\"\"\n", "return 0",
     ["assert candidate().$fn() == 0 and type(candidate().$fn()) is int"]),
    ("close", 1, ["close", "shutdown", "finish"],
     "class $Cls:\n\n    def __init__(self):\n        self._closed = False\n\n    def $fn(self):\n"
     "        \"\"\"Mark the $Cls closed.\"\"\"\n", "self._closed = True",
     ["obj = candidate()", "obj.$fn()", "assert obj._closed is True"]),
    ("str", 1, [""], "class $Cls:\n\n    def __init__(self, $a):\n        self.$a = $a\n\n    def __str__(self):\n",
     "return self.$a", ["assert str(candidate('$w1')) == '$w1'"]),
    ("enter", 1, [""], "class $Cls:\n\n    def __enter__(self):\n", "return self",
     ["obj = candidate()", "assert obj.__enter__() is obj"]),
    ("abstract", 1, ["run", "read", "write", "handle", "execute", "process"],
     "class $Cls:\n\n    def $fn(self):\n        \"\"\"Subclasses must implement this.\"\"\"\n", "raise NotImplementedError",
     [RAISES.format("candidate().$fn()")]),
    ("eq", 2, [""], "class $Cls:\n\n    def __init__(self, $a):\n        self.$a = $a\n\n    def __eq__(self, other):\n",
     "return self.$a == other.$a", ["assert candidate($v1) == candidate($v1)", "assert not candidate($v1) == candidate($v2)"]),
    ("increment", 2, ["increment", "tick", "step"],
     "class $Cls:\n\n    def __init__(self):\n        self.count = 0\n\n    def $fn(self):\n        \"\"\"Add one to the count.\"\"\"\n",
     "self.count += 1", ["obj = candidate()", "obj.$fn()", "obj.$fn()", "assert obj.count == 2"]),
    ("add", 1, ["add", "plus", "combine", "total"], "def $fn($x, $y):\n    \"\"\"Return the sum of $x and $y.\"\"\"\n",
     "return $x + $y", ["assert candidate($v1, $v2) == $v1 + $v2", "assert candidate('$w1', '$w2') == '$w1$w2'"]),
    ("subtract", 1, ["subtract", "difference", "minus"], "def $fn($x, $y):\n    \"\"\"Return $x minus $y.\"\"\"\n",
     "return $x - $y", ["assert candidate($v1, $v2) == $v1 - $v2", "assert candidate($v3, 0) == $v3"]),
    ("multiply", 1, ["multiply", "product", "times"], "def $fn($x, $y):\n    \"\"\"Return the product of $x and $y.\"\"\"\n",
     "return $x * $y", ["assert candidate($v1, $v2) == $v1 * $v2", "assert candidate($v3, 1) == $v3"]),
    ("identity", 1, ["identity", "same", "unchanged"], "def $fn($x):\n    \"\"\"Return $x unchanged.\"\"\"\n",
     "return $x", ["assert candidate($v1) == $v1", "assert candidate('$w1') == '$w1'"]),
    ("negate", 1, ["is_false", "negate", "is_empty"], "def $fn($x):\n    \"\"\"Return True if $x is false, else False.\"\"\"\n",
     "return not $x", ["assert candidate(0) is True and candidate([]) is True", "assert candidate($v1) is False"]),
    ("equal", 1, ["equal", "is_equal", "matches", "same"], "def $fn($x, $y):\n    \"\"\"Return True if $x and $y are equal.\"\"\"\n",
     "return $x == $y", ["assert candidate($v1, $v1) is True", "assert candidate($v1, $v2) is False"]),
    ("is_none", 1, ["is_none", "is_missing", "is_unset"], "def $fn($x):\n    \"\"\"Return True if $x is None.\"\"\"\n",
     "return $x is None", ["assert candidate(None) is True", "assert candidate(0) is False and candidate('') is False"]),
    ("to_str", 1, ["to_str", "as_string", "stringify"], "def $fn($x):\n    \"\"\"Return $x as a string.\"\"\"\n",
     "return str($x)", ["assert candidate($v1) == '$v1'", "assert candidate(None) == 'None'"]),
    ("empty_list", 1, ["new_list", "empty", "make_list"], "def $fn():\n    \"\"\"Return a new empty list.\"\"\"\n",
     "return []", ["first = candidate()", "assert first == [] and isinstance(first, list)", "assert candidate() is not first"]),
    ("empty_dict", 1, ["new_dict", "make_table", "empty_map"], "def $fn():\n    \"\"\"Return a new empty dict.\"\"\"\n",
     "return {}", ["first = candidate()", "assert first == {} and isinstance(first, dict)", "assert candidate() is not first"]),
    ("length", 1, ["count", "size", "length"], "def $fn($items):\n    \"\"\"Return the number of $items.\"\"\"\n",
     "return len($items)", ["assert candidate([$v1, $v2, $v3]) == 3", "assert candidate([]) == 0"]),
    ("first", 2, ["first", "head", "front"], "def $fn($items):\n    \"\"\"Return the first of the $items.\"\"\"\n",
     "return $items[0]", ["assert candidate([$v1, $v2, $v3]) == $v1"]),
    ("last", 2, ["last", "final", "back"], "def $fn($items):\n    \"\"\"Return the last of the $items.\"\"\"\n",
     "return $items[-1]", ["assert candidate([$v1, $v2, $v3]) == $v3"]),
    ("lower", 2, ["lower", "normalize", "fold"], "def $fn($s):\n    \"\"\"Return $s in lower case.\"\"\"\n",
     "return $s.lower()", ["assert candidate('$W1') == '$w1'", "assert candidate('Ab') == 'ab'"]),
    ("join", 2, ["join", "join_all", "concat"], "def $fn($items, sep):\n    \"\"\"Join the strings in $items with sep.\"\"\"\n",
     "return sep.join($items)", ["assert candidate(['$w1', '$w2'], ', ') == '$w1, $w2'", "assert candidate([], '-') == ''"]),
    ("abs", 1, ["magnitude", "absolute", "distance"], "def $fn($x):\n    \"\"\"Return the absolute value of $x.\"\"\"\n",
     "return abs($x)", ["assert candidate(-$v1) == $v1 and candidate($v2) == $v2"]),
    ("square", 1, ["square", "squared", "sq"], "def $fn($x):\n    \"\"\"Return $x squared.\"\"\"\n",
     "return $x * $x", ["assert candidate($v1) == $v1 * $v1", "assert candidate(-3) == 9"]),
    ("maximum", 2, ["largest", "maximum", "biggest"], "def $fn($items):\n    \"\"\"Return the largest of the $items.\"\"\"\n",
     "return max($items)", ["assert candidate([$v1, $v2, $v3]) == max($v1, $v2, $v3)"]),
    ("sort", 2, ["sort", "ordered", "sorted_copy"], "def $fn($items):\n    \"\"\"Return the $items in sorted order.\"\"\"\n",
     "return sorted($items)", ["assert candidate([$v1, $v2, $v3]) == sorted([$v1, $v2, $v3])", "assert candidate([]) == []"]),
    ("reverse", 2, ["reverse", "reversed_list", "backwards"], "def $fn($items):\n    \"\"\"Return the $items in reverse order.\"\"\"\n",
     "return $items[::-1]", ["assert list(candidate([$v1, $v2, $v3])) == [$v3, $v2, $v1]"]),
    ("lookup", 2, ["lookup", "get", "find"],
     "def $fn(mapping, key, default=None):\n    \"\"\"Return mapping[key], or default if key is missing.\"\"\"\n",
     "return mapping.get(key, default)", ["assert candidate({'$w1': $v1}, '$w1') == $v1",
                                         "assert candidate({}, '$w1') is None and candidate({}, '$w1', $v2) == $v2"]),
    ("or_default", 3, ["value_or", "with_default", "fallback"],
     "def $fn($x, default):\n    \"\"\"Return $x, or default if $x is None.\"\"\"\n", "if $x is None:\n    return default\nreturn $x",
     ["assert candidate(None, $v1) == $v1", "assert candidate($v2, $v1) == $v2 and candidate(0, $v1) == 0"]),
    ("sum_squares", 3, ["sum_squares", "sum_of_squares", "square_sum"],
     "def $fn($items):\n    \"\"\"Return the sum of the squares of the $items.\"\"\"\n",
     "total = 0\nfor $x in $items:\n    total += $x * $x\nreturn total",
     ["assert candidate([$v1, $v2]) == $v1 * $v1 + $v2 * $v2", "assert candidate([]) == 0"]),
    ("count_positive", 3, ["count_positive", "positives", "num_positive"],
     "def $fn($items):\n    \"\"\"Return how many of the $items are greater than zero.\"\"\"\n",
     "count = 0\nfor $x in $items:\n    if $x > 0:\n        count += 1\nreturn count",
     ["assert candidate([$v1, -$v2, 0, $v3]) == 2", "assert candidate([]) == 0"]),
    ("index_of", 3, ["index_of", "find_index", "position"],
     "def $fn($items, $x):\n    \"\"\"Return the index of $x in $items, or -1 if it is not there.\"\"\"\n",
     "for i, $y in enumerate($items):\n    if $y == $x:\n        return i\nreturn -1",
     ["assert candidate([$v1, $v2, $v3], $v2) == 1", "assert candidate([$v1], $v3) == -1"]),
]


def _identifiers(rng, fn):
    a, b = rng.sample(ATTRS, 2)
    x, y = rng.choice(PAIRS)
    v1, v2, v3 = rng.sample(range(2, 60), 3)
    w1, w2 = rng.sample(WORDS, 2)
    return dict(fn=fn, Cls=rng.choice(CLASSES), a=a, b=b, items=rng.choice(SEQS), x=x, y=y, s=rng.choice(STRS),
                v1=v1, v2=v2, v3=v3, w1=w1, w2=w2, W1=w1.upper())


def line_cut(body):
    """(head, rest) of a one-line body that a line problem can cut after its keyword or assignment operator."""
    m = re.fullmatch(r"(return|raise|[\w.]+ \+?=)( .+)", body)
    return m.groups() if m else None


def build_problems(seed=0, variants=2):
    """The problem set: every template instantiated `variants` times with identifiers drawn with `seed`; the even
    instances (the first, third, …) of a one-line template are line problems, the others body problems. An
    instance whose prompt repeats an earlier one's is left out (it would count one problem twice)."""
    rng, out = random.Random(seed), []
    for name, level, fns, prompt, body, test in TEMPLATES:
        for v, fn in enumerate(rng.sample(fns if len(fns) >= variants else fns * variants, variants)):
            ids = _identifiers(rng, fn)
            sub = lambda s: Template(s).substitute(ids)  # noqa: E731
            p, b = sub(prompt), sub(body)
            pad = " " * body_indent(p)
            cut = line_cut(b) if v % 2 == 0 else None
            p, solution = (p + pad + cut[0], cut[1]) if cut else (p, "".join(pad + l + "\n" for l in b.splitlines()))
            if any(q["prompt"] == p for q in out):  # a repeated draw (small pools, many variants): one problem
                continue
            out.append(dict(task_id=f"nanogpt4/{len(out)}", template=name, kind="line" if cut else "body",
                            level=0 if cut else level, prompt=p, canonical_solution=solution,
                            entry_point=ids["Cls"] if p.startswith("class") else fn,
                            test="def check(candidate):\n" + "".join(textwrap.indent(sub(l), "    ") + "\n" for l in test)))
    return out


def problem_set_hash(problems):
    return hashlib.sha256(registry.canonical(problems).encode()).hexdigest()


# ----------------------------------------------------------------------------- sampling and measuring

STOP_RULE = "humaneval.completion_end/1"  # part of the cached settings: a new rule is new measurements
PROMPT_RULE = "prompt-first/1"  # how prompt and completion share the context (`sample_completions`), likewise
MIN_NEW_TOKENS = 32  # the least room a completion gets: a prompt is cut from its left only to leave this much


def sample_completions(engine, prompt, n, max_new_tokens=64, temperature=0.8, top_k=None, seed=0):
    """n completions of the prompt's function body (or line) through the engine, each ended by the one code
    stop rule (`humaneval.completion_end`). The prompt comes first: it is kept whole and the completion gets the
    context left (at most max_new_tokens); only a prompt that leaves less than MIN_NEW_TOKENS loses tokens from
    its left. Returns (completions, prompt tokens cut, the completion's token budget)."""
    ids, cut = prompt_ids(engine.tok, prompt, engine.n_ctx - min(max_new_tokens, MIN_NEW_TOKENS))
    budget = min(max_new_tokens, engine.n_ctx - len(ids))
    params = SamplingParams(max_tokens=budget, temperature=temperature, top_k=top_k or 0, seed=seed, n=n,
                            stop_fn=completion_end(prompt))
    return [c.text for c in engine.generate([ids], params)[0].choices], cut, budget


def measure(runs, problems, n=100, temperature=0.8, top_k=None, max_new_tokens=64, seed=0, timeout=3.0, workers=4,
            device=None, table=None, log=print):
    """{run: {task_id: {n, passed, pass_at_1, unique, results, example}}} for each run directory: n samples per
    problem, identical programs executed once. Results are cached per run in
    <run>/capability/<settings>.json (written after every problem, tied to the checkpoint), so a re-run skips
    finished work. `table`: also write the whole table there."""
    settings = dict(problem_set=problem_set_hash(problems), stop_rule=STOP_RULE, prompt_rule=PROMPT_RULE, n=n,
                    temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed)
    tag = hashlib.sha256(registry.canonical(settings).encode()).hexdigest()[:12]
    out = {}
    for run in runs:
        path, ckpt = Path(run) / "capability" / f"{tag}.json", checkpoint_id(run)
        cache = json.loads(path.read_text()) if path.exists() else {}
        done = cache["problems"] if cache.get("checkpoint") == ckpt else {}
        engine = None
        for p in problems:
            if p["task_id"] in done:
                continue
            if engine is None:
                loaded = load_run(run, device)
                engine = Engine(loaded.model, loaded.tok, max_rows=max(32, n))
            s = seed + zlib.crc32(p["task_id"].encode())  # a fixed seed per (problem, model)
            comps, cut, budget = sample_completions(engine, p["prompt"], n, max_new_tokens, temperature, top_k, s)
            progs = [program(p, c) for c in comps]
            res = run_programs(progs, timeout, workers)
            c = sum(r == "passed" for r in res)
            hist = {}
            for r in res:
                hist[r] = hist.get(r, 0) + 1
            top = dict(sorted(hist.items(), key=lambda kv: -kv[1])[:5])
            example = next((x for x, r in zip(comps, res) if r == "passed"), comps[0])
            done[p["task_id"]] = dict(n=n, passed=c, pass_at_1=pass_at_k(n, c, 1), unique=len(set(progs)),
                                      results=top, example=example, prompt_tokens_cut=cut, max_new_tokens=budget)
            atomic_write_json(path, dict(settings=settings, checkpoint=ckpt, problems=done))
        solved = sum(done[p["task_id"]]["passed"] > 0 for p in problems)
        log(f"{run}: {solved}/{len(problems)} problems solved at least once in {n} samples")
        out[str(run)] = {p["task_id"]: done[p["task_id"]] for p in problems}
    if table:
        atomic_write_json(table, dict(settings=settings, runs=out))
    return out


# ----------------------------------------------------------------------------- the report's method

def neg_mean_log_pass(results, tasks):
    """-E_P[log pass_rate] over `tasks`. Counts are clipped to [1/2, n-1/2] so that a problem passed by no sample
    (possible only for the target) or by every sample contributes a finite value."""
    return -float(np.mean([math.log(min(max(results[t]["passed"], 0.5), results[t]["n"] - 0.5) / results[t]["n"])
                           for t in tasks]))


class NothingToFit(ValueError):
    """The report's rule (problems every fit model solves at least once) leaves no problem: nothing to register."""


def buckets_by_difficulty(fit_results, n_buckets):
    """Problems every fit model solves at least once, split into up to n_buckets equal buckets, easiest first,
    by the fit models' mean log pass rate."""
    tasks = [t for t in fit_results[0] if all(t in r and r[t]["passed"] > 0 for r in fit_results)]
    if not tasks:
        raise NothingToFit("no problem is solved at least once by every model of the fit set")
    score = {t: np.mean([math.log(r[t]["passed"] / r[t]["n"]) for r in fit_results]) for t in tasks}
    order = sorted(tasks, key=lambda t: -score[t])
    return [list(b) for b in np.array_split(order, min(n_buckets, len(order)))]


def measure_cascade(runs, computes, problems, log=print, **settings):
    """`measure` for the fit models, smallest first, each on the problems every smaller one solved at least once:
    the report's rule keeps only problems all of them solve, so the others need not be sampled again (the same
    kept set and pass rates as measuring every model on every problem, at a fraction of the samples)."""
    out, left = {}, list(problems)
    for c, run in sorted(zip(computes, runs), key=lambda x: x[0]):
        out[str(run)] = measure([run], left, log=log, **settings)[str(run)]
        left = [p for p in left if out[str(run)][p["task_id"]]["passed"] > 0]
        log(f"  {len(left)} problems solved at least once by every model so far")
    return out


def _run_info(run):
    run = Path(run)
    cfg = read_config(run)
    return C.identity(cfg["train"], cfg["model"]), json.loads((run / "done.json").read_text())["flops"]


def predict_capability(path, fit_runs, target_run, target_config, target_compute, problems=None, measured=None,
                       n_buckets=4, settings=None, device=None, log=print):
    """Fit the capability law per difficulty bucket on `fit_runs` (measured here unless `measured` is given) and
    register the prediction for the target (its training config and planned compute) at `path`."""
    settings = dict(settings or {})
    info = [_run_info(r) for r in fit_runs]
    computes = [flops for _, flops in info]
    if measured is None:
        measured = measure_cascade(fit_runs, computes, problems, device=device, log=log, **settings)
    results = [measured[str(r)] for r in fit_runs]
    groups = buckets_by_difficulty(results, n_buckets)
    n_total = max(map(len, results))
    kept = sum(map(len, groups))
    log(f"{kept} of {n_total} problems are solved at least once by all {len(fit_runs)} fit models; "
        f"{len(groups)} buckets")
    pred = dict(settings=dict(settings, problem_set=problem_set_hash(problems) if problems else None),
                target_compute=target_compute, problems_total=n_total, problems_kept=kept)

    def fitted(bucket, tasks):
        ys = [neg_mean_log_pass(r, tasks) for r in results]
        fit = fit_pass_rate(computes, ys, c_ref=target_compute)
        return dict(bucket=bucket, tasks=tasks, fit=fit.to_dict(), ladder=ys, predicted=float(fit.predict(target_compute)))

    pred["buckets"] = [fitted(i, tasks) for i, tasks in enumerate(groups)]
    pred["overall"] = fitted("all", sum(groups, []))
    ladder = [dict(run=str(r), config_hash=registry.config_hash(cfg), compute=flops,
                   neg_mean_log_pass={str(b["bucket"]): b["ladder"][i] for b in pred["buckets"] + [pred["overall"]]})
              for i, (r, (cfg, flops)) in enumerate(zip(fit_runs, info))]
    return registry.register(path, target_config, target_run, ladder, pred)


def verify_capability(path, target_run, problems=None, measured=None, out=None, png=None, device=None, log=print):
    """Check the registered record and the target's config, measure (unless `measured` is given) the target with
    the registered settings, and write predicted vs measured per bucket to `out` (JSON) and `png`."""
    record = registry.load(path)
    cfg, flops = _run_info(target_run)
    registry.check_target(record, cfg)
    pred = record["prediction"]
    settings = {k: v for k, v in pred["settings"].items() if k != "problem_set"}
    if measured is None:
        if problem_set_hash(problems) != pred["settings"]["problem_set"]:
            raise registry.RegistryError("the problem set differs from the one the prediction was registered on")
        kept = {t for b in pred["buckets"] for t in b["tasks"]}  # only these enter the registered law
        measured = measure([target_run], [p for p in problems if p["task_id"] in kept], device=device, log=log,
                           **settings)[str(target_run)]
    rows = []
    for b in pred["buckets"] + [pred["overall"]]:
        y = neg_mean_log_pass(measured, b["tasks"])
        at_actual = float(PassRateFit(**b["fit"]).predict(flops))
        # rel_error as for the loss: (predicted - measured) / measured
        rows.append(dict(bucket=b["bucket"], problems=len(b["tasks"]), predicted=b["predicted"],
                         predicted_at_actual_compute=at_actual, measured=y, rel_error=(at_actual - y) / y,
                         unsolved=sum(measured[t]["passed"] == 0 for t in b["tasks"])))
        log(f"bucket {b['bucket']}: predicted -E[log pass] {at_actual:.3f}, measured {y:.3f}")
    result = dict(record_sha256=record["record_sha256"], target_run=str(target_run), compute=flops,
                  planned_compute=pred["target_compute"], buckets=rows[:-1], overall=rows[-1])
    if out:
        atomic_write_json(out, result)
    if png:
        plot(record, result, png)
    return result


def plot(record, result, png):
    """The Figure-2 analogue: one panel per bucket (and all kept problems); x = compute / target compute (log),
    y = -mean log pass rate; ladder points, the fit dotted, the prediction hollow, the target's measurement a star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pred = record["prediction"]
    cref = pred["target_compute"]
    xs = np.array([r["compute"] for r in record["ladder_runs"]]) / cref
    panels = pred["buckets"] + [pred["overall"]]
    measured = {r["bucket"]: r for r in (result["buckets"] + [result["overall"]])} if result else {}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, b in zip(axes[0], panels):
        fit = PassRateFit(**b["fit"])
        grid = np.logspace(np.log10(xs.min()) - 0.2, 0.3, 50)
        ax.plot(grid, fit.predict(grid * cref), ":", color="C0", label="fit")
        ax.plot(xs, b["ladder"], "o", color="C0", label="fit models")
        if b["bucket"] in measured:
            ax.plot([result["compute"] / cref], [measured[b["bucket"]]["measured"]], "*", ms=12, color="C3",
                    label="target measured")
        ax.plot([1.0], [b["predicted"]], "o", ms=11, mfc="none", color="C1", label="prediction")
        ax.set_xscale("log")
        ax.set_title(f"bucket {b['bucket']} ({len(b['tasks'])} problems)", fontsize=9)
        ax.set_xlabel("compute / target compute")
    axes[0][0].set_ylabel("-mean log pass rate")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
