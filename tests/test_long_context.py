"""The long-context variant (the 8K → 32K analogue): windows inside single long documents, the RoPE base raised,
a short continued pretraining at 4× the context, measured by held-out loss by position, loadable and served with
its own context length."""
import json

import numpy as np
import pytest

from nanogpt4 import runs
from nanogpt4.cli import main
from nanogpt4.train import long_context as LC


def test_windows_lie_inside_one_long_document():
    eot = 9
    data = np.array([9, 1, 2, 3, 9, 4, 5, 6, 7, 8, 1, 2, 9, 3, 4], dtype=np.uint16)  # documents of 3, 7, 2 tokens
    docs = LC.long_documents(data, eot, length=4)
    assert docs.tolist() == [[5, 3]]  # only the 7-token document holds a window of 5 tokens, at 3 offsets
    x, y = LC.windows(data, docs, 4, 50, np.random.default_rng(0))
    assert {tuple(r) for r in x.tolist()} == {(4, 5, 6, 7), (5, 6, 7, 8), (6, 7, 8, 1)}
    assert (y[:, :-1] == x[:, 1:]).all() and set(y[:, -1].tolist()) == {8, 1, 2}  # the last target is in it too
    x, _ = LC.windows(data, docs, 4, 2)  # fixed evaluation windows: evenly spaced, the same every time
    assert x.tolist() == [[4, 5, 6, 7], [6, 7, 8, 1]]
    assert LC.rope_theta(10000, 4, 64) == pytest.approx(10000 * 4 ** (64 / 62))


def test_variant_trains_at_four_times_the_context_and_is_served(tiny_tokens, tmp_path):
    from conftest import random_run
    from nanogpt4.serve import models
    from nanogpt4.tokenizer import Tokenizer
    base = random_run(tmp_path / "base", Tokenizer.load(tiny_tokens / "tokenizer" / "tokenizer.json"), seq_len=16)
    out = tmp_path / "long"
    argv = ["long-context", "--base", str(base), "--tokens", str(tiny_tokens / "tokenizer" / "tokens"), "--out", str(out),
            "--steps", "40", "--batch-size", "8", "--lr", "3e-3", "--eval-every", "20", "--eval-windows", "16",
            "--dtype", "float32", "--quiet"]
    with pytest.raises(FileNotFoundError):
        main(argv[:4] + [str(tiny_tokens / "none")] + argv[5:])
    main(argv)
    done = json.loads((out / "done.json").read_text())
    assert done["seq_len"] == 64 and done["context"] == 16 and done["tokens"] == 40 * 8 * 64
    for s in LC.SPLITS:
        assert len(done["by_position"][s]) == 64 and set(done["buckets"][s]) == {"below", "x1_2", "far"}
        # trained at the long context, the far positions improve on the untrained base at the same positions
        assert done["buckets"][s]["far"] < done["untrained_buckets"][s]["far"]
    assert (out / "by_position.png").stat().st_size > 10_000
    run = runs.load(out, "cpu")
    assert run.model.cfg.seq_len == 64 and run.model.cos.shape[0] == 64
    assert run.model.cfg.rope_theta == pytest.approx(LC.rope_theta(10000, 4, 16))
    served = models.write(tmp_path / "models.yaml", {"nano4-base": base, "nano4-base-1k": out}, {},
                          settings={"nano4-base-1k": dict(prices=dict(prompt=0.06, completion=0.12))})
    snap = served.resolve(next(n for n in served.names() if n.startswith("nano4-base-1k")))
    assert snap.prices == dict(prompt=0.06, completion=0.12)
    assert json.loads((out / "config.json").read_text())["model"]["seq_len"] == 64
    before = (out / "done.json").stat().st_mtime
    main(argv + ["--resume"])  # complete: not trained again
    assert (out / "done.json").stat().st_mtime == before
