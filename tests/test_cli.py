"""The command line: every option explained, and a mistake the user can fix is one line, not a traceback."""
import argparse
import importlib
import os
import subprocess
import sys

import pytest

from nanogpt4 import cli
from nanogpt4.scaling.registry import RegistryError
from nanogpt4.tokenizer import TokenizerError
from nanogpt4.checkpoint import CheckpointError


def options(parser, prefix):
    """(where, option) for every action of a parser and of its sub-parsers, -h excepted."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from options(sub, f"{prefix} {name}")
        elif not isinstance(a, argparse._HelpAction):
            yield prefix, a


@pytest.mark.parametrize("verb", list(cli.STAGES))
def test_every_option_has_help(verb):
    p = argparse.ArgumentParser(prog=f"nanogpt4 {verb}")
    importlib.import_module(cli.STAGES[verb][0]).add_args(p)
    missing = [f"{where}: {'/'.join(a.option_strings) or a.dest}" for where, a in options(p, verb)
               if not (a.help or "").strip()]
    assert not missing


def command_line(monkeypatch, *argv):
    """cli.main as the `nanogpt4` command runs it: argv from sys.argv."""
    monkeypatch.setenv("NANOGPT4_NO_TCMALLOC", "1")
    monkeypatch.setattr(sys, "argv", ["nanogpt4", *argv])
    return cli.main()


def error_line(capsys, monkeypatch, *argv):
    assert command_line(monkeypatch, *argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("nanogpt4: error: ")
    return err


def test_bad_values_are_one_line(capsys, monkeypatch, tmp_path):
    tokens = ["--tokens", str(tmp_path)]
    assert "--depth -1: must be > 0" in error_line(capsys, monkeypatch, "pretrain", "--depth", "-1", *tokens)
    assert "--dtype float8" in error_line(capsys, monkeypatch, "pretrain", "--dtype", "float8", *tokens)
    assert "meta.json" in error_line(capsys, monkeypatch, "pretrain", "--tokens", str(tmp_path / "missing"),
                                     "--out", str(tmp_path / "run"))


@pytest.mark.parametrize("error", [CheckpointError("checkpoint x: model.safetensors is corrupt"),
                                   TokenizerError("tok.json: checksum mismatch"), RegistryError("record changed"),
                                   FileNotFoundError("no such\nfile"), NotADirectoryError("x"), PermissionError("x")])
def test_user_errors_are_one_line(capsys, monkeypatch, error):
    from nanogpt4.train import pretrain

    def fail(args):
        raise error

    monkeypatch.setattr(pretrain, "main", fail)
    assert error_line(capsys, monkeypatch, "pretrain") == f"nanogpt4: error: {' '.join(str(error).split())}\n"


def test_errors_reach_a_python_caller_and_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    from nanogpt4.train import pretrain
    with pytest.raises(pretrain.ConfigError):  # argv given: called from Python, the caller handles the error
        cli.main(["pretrain", "--depth", "-1", "--tokens", str(tmp_path)])

    def bug(args):
        raise KeyError("bug")

    monkeypatch.setattr(pretrain, "main", bug)
    with pytest.raises(KeyError):
        command_line(monkeypatch, "pretrain")


def test_corrupt_checkpoint_is_one_line_in_a_subprocess(tiny_tokens, tmp_path):
    ckpt = tmp_path / "run" / "ckpt" / "step_0000005"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text('{"step": 5, "sha2')  # the only checkpoint: unreadable
    (ckpt.parent / "latest").write_text("step_0000005\n")
    env = dict(os.environ, NANOGPT4_NO_TCMALLOC="1")
    out = subprocess.run([sys.executable, "-m", "nanogpt4.cli", "pretrain", "--resume", "--quiet", "--depth", "1",
                          "--out", str(tmp_path / "run"), "--tokens", str(tiny_tokens / "tokenizer" / "tokens")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanogpt4: error: ")
    assert "step_0000005: unreadable meta.json" in lines[0]


def test_a_stopped_training_says_how_to_go_on(capsys, monkeypatch):
    """`nanogpt4 run` and `scaling` resume by themselves: the hint is the same command, not pretrain's --resume."""
    from nanogpt4 import pipeline
    from nanogpt4.train import pretrain

    def stopped(args):
        raise pretrain.Preempted("runs/x: stopped by SIGTERM at step 149 of 456, checkpointed")

    from nanogpt4.scaling import stage
    monkeypatch.setattr(pretrain, "main", stopped)
    monkeypatch.setattr(pipeline, "main", stopped)
    monkeypatch.setattr(stage, "main", stopped)
    assert error_line(capsys, monkeypatch, "pretrain", "--tokens", "t").endswith("; continue with --resume\n")
    resumed = error_line(capsys, monkeypatch, "pretrain", "--tokens", "t", "--resume")
    assert resumed.endswith("checkpointed; run the same command again to continue\n")
    for argv in (["run"], ["scaling", "all"]):  # both resume by themselves
        assert error_line(capsys, monkeypatch, *argv).endswith("; run the same command again to continue\n")
