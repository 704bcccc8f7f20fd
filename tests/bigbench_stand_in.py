"""A generated stand-in for the BIG-bench 1.0.0 files the project reads, for tests only.

The pinned `bigbench==1.0.0` sdist is no longer served by PyPI (only 0.0.1 is listed; NOTES.md, 2026-12-05), so a
machine without it in its cache cannot run the code paths that read it. This writes files of the same names and the
same JSON shapes (BIG-bench's task.json: `examples` with `input` and `target` or `target_scores`) and, where tests
count items, the same sizes, with generated text, into a cache's unpacked/ directory, where the real loaders look
before they download. The loaders run unchanged; only the text is made up, so a test may check formats, counts and
plumbing, never a score on BIG-bench's content."""
import json
import random
from pathlib import Path

from nanogpt4.evals.benchmarks import BIGBENCH
from nanogpt4.posttrain import data as D

STANDING_IN = False  # set by conftest.bigbench_cache when the tests use this stand-in
TRUTHFUL = "bigbench/benchmark_tasks/truthful_qa/task_mc.json"
HHH_SIZES = dict(harmless=58, helpful=59, honest=61, other=43)  # the real files' sizes (221 pairs), and
TRUTHFUL_SIZE = 299  # TruthfulQA MC1's: loaders' counts are checked as on the real data
THINGS = ["the moon", "a river", "an apple", "the library", "a violin", "the harbour", "a glacier", "the market"]


def _instruction_examples(rng, n):
    return [dict(input=f"Question {i}: what is next to {rng.choice(THINGS)}?", target=[rng.choice("ABCDE")])
            for i in range(n)]


def _hhh_examples(rng, n):
    out = []
    for i in range(n):
        thing = rng.choice(THINGS)
        out.append(dict(input=f"Can you tell me about {thing}?\n\nAssistant: Sure.\n\nHuman: Please go on ({i}).",
                        target_scores={f"Here is a short, careful answer about {thing}.": 1,
                                       f"No. Figure out {thing} yourself.": 0}))
    return out


def _truthful(rng, n):
    examples = [dict(input=f"What happens if you look at {rng.choice(THINGS)} for {i} minutes?",
                     target_scores={"Nothing in particular happens.": 1, "You turn to stone.": 0,
                                    "You become invisible.": 0, "It looks back.": 0}) for i in range(n)]
    return dict(task_prefix="Q: What is the boiling point of water at sea level?\nA: 100 degrees Celsius.\n\n",
                examples=examples)


def write(cache, n=300, seed=0):
    """Write every BIG-bench member the project reads into cache/unpacked/<sdist>/ (existing files are kept)."""
    rng = random.Random(seed)
    root = Path(cache) / "unpacked" / BIGBENCH.filename
    files = {m: dict(examples=_instruction_examples(rng, n)) for m in D.BIGBENCH_MEMBERS if m.startswith(D.NI)}
    files |= {f"{D.HHH}/{s}/task.json": dict(examples=_hhh_examples(rng, HHH_SIZES[s])) for s in D.HHH_SUBSETS}
    files[TRUTHFUL] = _truthful(rng, TRUTHFUL_SIZE)
    for member, content in files.items():
        path = root / member
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content), encoding="utf-8")
    return root


def available(cache):
    """True when the real sdist is in the cache, or its members were unpacked from it before."""
    unpacked = Path(cache) / "unpacked" / BIGBENCH.filename
    return (Path(cache) / "packages" / BIGBENCH.filename).exists() or (unpacked / TRUTHFUL).exists()
