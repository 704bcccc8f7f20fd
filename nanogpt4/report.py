"""The report card: report.md + PNG plots from the artifacts each stage wrote into the work directory.
Every number here is read from a file a stage measured and wrote; the report says which."""
import json
import statistics
from pathlib import Path

from .common import atomic_write_text, iter_jsonl
from .runs import read_config


def _read(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def _metrics(run):
    path = Path(run) / "metrics.jsonl"
    return list(iter_jsonl(path, torn_tail=True)) if path.exists() else []


def plot_losses(metrics, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    train = [m for m in metrics if "loss" in m and "event" not in m]
    ax.plot([m["tokens"] / 1e6 for m in train], [m["loss"] for m in train], lw=1, alpha=0.7, label="train (batch)")
    evals = [m for m in metrics if any(k.startswith("val/") for k in m)]
    for key in sorted({k for m in evals for k in m if k.startswith("val/")}):
        pts = [(m["tokens"] / 1e6, m[key]) for m in evals if key in m]
        ax.plot(*zip(*pts), marker="o", ms=3, label=key[4:])
    for m in metrics:
        if m.get("event") == "spike":
            ax.axvline(m.get("tokens", 0) / 1e6, color="red", lw=0.5)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 10))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_throughput(metrics, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [m for m in metrics if "tok_s" in m]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([m["step"] for m in rows], [m["tok_s"] for m in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("tokens/s")
    ax2 = ax.twinx()
    ax2.plot([m["step"] for m in rows], [100 * m["mfu"] for m in rows], lw=0)
    ax2.set_ylabel("MFU (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def corpus_section(out):
    man = _read(out / "corpus" / "manifest.json")
    if not man:
        return []
    lines = ["## Corpus", "", "From `corpus/manifest.json` (written by `nanogpt4 data`).", "",
             "| source | role | registry | package | version | docs kept | MB kept | dropped (reason: docs) |",
             "|---|---|---|---|---|---:|---:|---|"]
    for s in man.get("sources", []):
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(s.get("dropped", {}).items())) or "none"
        lines.append(f"| {s['name']} | {s.get('role')} | {s.get('registry')} | {s.get('package')} | {s.get('version')} | "
                     f"{s['docs_kept']} | {s['bytes_kept'] / 1e6:.2f} | {dropped} |")
    lines.append("")
    f = man.get("filters", {})
    if f:
        tox = f.get("toxicity") or {}
        lines += [f"Filters: documents under {f.get('min_chars')} characters; exact duplicates (sha256 of the normalised "
                  f"text); near duplicates ({f['near_duplicate']['method']}, Jaccard ≥ {f['near_duplicate']['threshold']}); "
                  + (f"toxicity ({tox.get('classifier')} on ~1000-character chunks of prose scoring ≥ "
                     f"{tox.get('chunk_prob')}: {tox.get('rule')})." if tox else "no toxicity filter."), ""]
    if "splits" in man:
        lines += ["Splits: " + ", ".join(f"{k}: {v.get('docs')} docs, {v.get('bytes', 0) / 1e6:.1f} MB"
                                          for k, v in man["splits"].items()), ""]
    return lines


def tokenizer_section(out):
    rep = _read(out / "tokenizer" / "report.json")
    if not rep:
        return []
    lines = ["## Tokenizer", "", "From `tokenizer/report.json` (written by `nanogpt4 tokenizer`): bytes per token, "
             "higher is better compression.", "", "| split | ours | cl100k_base |", "|---|---:|---:|"]
    for split, r in rep.get("bytes_per_token", {}).items():
        lines.append(f"| {split} | {r.get('ours', float('nan')):.3f} | {r.get('cl100k', float('nan')):.3f} |")
    return lines + [""]


def pretrain_section(out):
    run = out / "pretrain"
    cfg = read_config(run) if (run / "config.json").exists() else {}
    done, metrics = _read(run / "done.json"), _metrics(run)
    if not cfg:
        return []
    tr, der, mod = cfg["train"], cfg["derived"], cfg["model"]
    rates = [m for m in metrics if "tok_s" in m][1:]  # the first interval includes compilation
    lines = ["## Pretraining", "",
             f"Model: depth {mod['n_layer']}, width {mod['n_embd']}, {mod['n_head']} heads ({mod['n_kv_head']} kv), "
             f"context {mod['seq_len']}, vocab {mod['vocab_size']}: **{der['params'] / 1e6:.2f}M parameters**. "
             f"Trained on {der['tokens'] / 1e6:.1f}M tokens in {der['steps']} steps of {der['batch_seqs']} sequences, "
             f"lr {tr['lr']} (muP base width 64), dtype {tr['dtype']}, compile {tr['compile']}, "
             f"{cfg.get('world_size', 1)} process(es) on {cfg.get('device')} ({cfg.get('threads')} threads), "
             f"git {cfg.get('git_commit', '?')[:12]}.", ""]
    target = (_read(out / "scaling" / "timings.json") or {}).get("target")
    if target:
        lines += [f"It is the scaling stage's registered target: its losses were predicted and sealed before its first "
                  f"step, then it was trained by `nanogpt4 pretrain --registered scaling/prediction_loss.json` in "
                  f"**{target['seconds']:.0f} s** (`scaling/timings.json`); see Predictable scaling.", ""]
    lines += ["![loss curves](loss.png)", ""]
    if done:
        fin = done["final"]
        lines += ["| final loss (nats/token) | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in fin.items()]
        lines += ["", f"Spikes skipped: {len(done.get('skipped', []))}. Training compute: {done['flops']:.3g} FLOPs "
                  "(6·N + attention per token, counted by `config.flops_per_token`).", ""]
    if rates:
        tok = statistics.median(m["tok_s"] for m in rates)
        mfu = statistics.median(m["mfu"] for m in rates)
        lines += [f"Throughput (median over {len(rates)} logging intervals of 10 steps, from `metrics.jsonl`): "
                  f"**{tok:,.0f} tokens/s**, MFU **{mfu:.1%}** of the matmul peak measured on this machine "
                  f"(`nanogpt4.perf.matmul_peak`, square {tr['dtype']} matmuls).", "", "![throughput](throughput.png)", ""]
    return lines


def long_context_section(out):
    done = _read(out / "pretrain-long" / "done.json")
    if not done:
        return []
    c, n = done["context"], done["seq_len"]
    lines = ["## Long context (the 8K → 32K analogue)", "",
             f"`nanogpt4 long-context` (`nanogpt4/train/long_context.py`): the base model at {n // c}× its context, "
             f"{c} → {n} tokens, RoPE base raised to {done['rope_theta']:,.0f} (NTK-aware) and pretrained "
             f"{done['tokens'] / 1e6:.2f}M tokens more on {n}-token windows of single documents "
             f"({done['train_documents']:,} training documents are that long) in {done['seconds']:.0f} s. Held-out loss by "
             "position (nats/token) on fixed long-document windows; the base model at the new context without the "
             "continued pretraining beside it. Served as its own snapshot with its own context length and prices.", "",
             f"| split | model | positions {3 * c // 4}-{c} | {c}-{2 * c} | {2 * c}-{n} | lower at {2 * c}-{n} than below {c} |",
             "|---|---|---:|---:|---:|---|"]
    for s, v in done["buckets"].items():
        u = done["untrained_buckets"][s]
        lines.append(f"| {s} | variant | {v['below']:.4f} | {v['x1_2']:.4f} | {v['far']:.4f} | "
                     f"**{'yes' if done['keeps_falling'][s] else 'no'}** |")
        lines.append(f"| {s} | base, untrained at {n} | {u['below']:.4f} | {u['x1_2']:.4f} | {u['far']:.4f} | |")
    return lines + ["", "![loss by position](pretrain-long/by_position.png)", ""]


def samples_section(out):
    samples = _read(out / "samples.json")
    if not samples:
        return []
    lines = ["## Samples", "", "Temperature 0.8, top-k 50, 80 new tokens, from the final checkpoint.", ""]
    for s in samples:
        text = (s["prompt"] + s["completion"]).replace("```", "'''")
        lines += ["```", text, "```", ""]
    return lines


def serve_section(out):
    """The serve smoke test (`nanogpt4 serve --smoke`): the API started, exercised through the openai client, stopped."""
    r = _read(out / "serve_smoke.json")
    if not r:
        return []
    lines = ["## Serving smoke test", "", "`nanogpt4 serve --smoke` started the OpenAI-compatible API on the final checkpoint "
             "(127.0.0.1, a temporary key and database), ran each check through the official `openai` client and "
             f"stopped it: **{'all passed' if r['passed'] else 'FAILED'}** in {r['seconds']} s (model loading included). "
             f"Streamed chat: time to first token {r.get('ttft_s', float('nan')) * 1000:.0f} ms, "
             f"{r.get('decode_tok_s', 0):.0f} tokens/s after it (one stream, eager fp32; `bench/serve.py` measures load).",
             "", "| check | result | detail |", "|---|---|---|"]
    for name, c in r["checks"].items():
        lines.append(f"| {name} | {'pass' if c['passed'] else '**FAIL**'} | {str(c['detail']).replace('|', '/')} |")
    return lines + [""]


LABELS = {"incorrect_disallowed": "fails to refuse (disallowed)",
          "disallowed_says_nothing": "says nothing (disallowed; within fails to refuse)", "jailbreak_success": "jailbreak succeeds",
          "incorrect_allowed": "refuses wrongly (allowed)", "incorrect_sensitive": "refuses wrongly (sensitive)",
          "steerability": "follows the system message", "toxic": "toxic answers"}


def posttrain_section(out):
    """SFT, reward model, RBRM, RLHF and DPO: what each measured, and the behaviour of base vs post-trained models."""
    b = _read(out / "posttrain" / "behaviour.json")
    if not b:
        return []
    wins, battles = b.pop("_win_rates", {}), b.pop("_battle", {})
    b = {k: b[k] for k in sorted(b, key=lambda k: ("base", "sft", "rlhf", "dpo").index(k)
                                 if k in ("base", "sft", "rlhf", "dpo") else 9)}
    sft, rm, dpo, rlhf = (_read(out / n / "done.json") or {} for n in ("sft", "rm", "dpo", "rlhf"))
    rbrm = _read(out / "rlhf" / "rbrm.json") or {}
    lines = ["## Post-training", "",
             f"SFT (`nanogpt4 sft`): {sft.get('train_conversations')} conversations, held-out loss on assistant tokens "
             f"{sft.get('heldout_loss_base', float('nan')):.3f} (base) → {sft.get('heldout_loss', float('nan')):.3f}. "
             f"Reward model (`nanogpt4 rm`): held-out pair accuracy {rm.get('heldout_accuracy', float('nan')):.3f} "
             f"({rm.get('heldout_pairs')} generated pairs, chance 0.5); human-labelled TruthfulQA pairs (true over false "
             f"answer) {rm.get('human_accuracy') or float('nan'):.3f} ({rm.get('human_pairs')} pairs that fit).",
             ""]
    if rbrm:
        c, k = rbrm["classifier"]["heldout"], rbrm["ranking"]
        fitted = (f"the reward model alone {k['rm_alone']:.3f}, RM + the rubric's rewards {k['rm_plus_rubric']:.3f}, "
                  f"RM + the weights fitted on top of it {k['after']:.3f} (the reward PPO gets)" if "rm_alone" in k
                  else f"the fitted weights {k['after']:.3f}")
        lines += [f"RBRM (offline classifier backend, `nanogpt4 rbrm`): refusal accuracy {c['accuracy']:.3f} on "
                  f"{c['n']} held-out labelled completions (chance {c['chance']:.3f}). Ranking accuracy of ideal over "
                  f"less good over unacceptable completions ({k['pairs']} held-out pairs): the rubric's rewards "
                  f"{k['before']:.3f}; {fitted}.", ""]
    lines += [f"RLHF (`nanogpt4 rlhf`, PPO with the reward model + RBRM): mean reward {rlhf.get('reward_first', float('nan')):.3f} "
              f"over the first 5 steps, {rlhf.get('reward_last', float('nan')):.3f} over the last 5, KL to SFT "
              f"{rlhf.get('kl_last', float('nan')):.3f}. "
              f"DPO (`nanogpt4 dpo`): held-out implicit-reward accuracy {dpo.get('heldout_accuracy', float('nan')):.3f}.", "",
              "Behaviour on held-out prompts (`nanogpt4 behaviour`; judged by a rule-based refusal detector, the steering "
              "checks and the pinned toxicity classifier, none of which any model was trained on). Rate ± stderr (n):", "",
              "| | " + " | ".join(b) + " |", "|---|" + "---:|" * len(b)]
    for key, label in LABELS.items():
        lines.append(f"| {label} | " + " | ".join(  # a record from before a metric existed shows "–"
            f"{r['metrics'][key]['rate']:.2f} ± {r['metrics'][key]['stderr']:.2f} ({r['metrics'][key]['n']})"
            if key in r["metrics"] else "–" for r in b.values()) + " |")
    if wins:
        lines += ["", "Win rates judged by the reward model on held-out chat, instruction, allowed and sensitive prompts "
                  "(ties count half): " + ", ".join(f"{k} {v['rate']:.2f} ± {v['stderr']:.2f} ({v['n']})"
                                                    for k, v in wins.items()) + "."]
    for grader in dict.fromkeys(v["grader"] for v in battles.values()):
        lines += ["", f"Win rates judged by `{grader}` in the evals framework's model-graded battle (spec `battle-chat`: "
                  "is the first of two answers to the same held-out prompt the better one?), each pair graded in both "
                  "orders so a preference for a position cancels; invalid gradings left out: " + ", ".join(
                      f"{k} {v['rate']:.2f} ± {v['stderr']:.2f} ({v['n']} gradings, {v['invalid']} invalid)"
                      for k, v in battles.items() if v["grader"] == grader) + "."]
    lines += ["", "![behaviour](posttrain/behaviour.png)", "", "Examples (greedy):", ""]
    for name, r in b.items():
        for kind, exs in r["examples"].items():
            lines.append(f"- {name}, {kind}: " + " / ".join(f"`{e['answer'][:80]!r}`" for e in exs[:1]))
    return lines + [""]


def vision_section(out):
    """The vision stage: accuracy per held-out task with and without the image, baselines, text loss, examples."""
    d = _read(out / "vision" / "run" / "done.json")
    if not d:
        return []
    lines = ["## Vision", "",
             f"`nanogpt4 vision`: a ViT encoder and projector trained from scratch on the SFT model ({d['train_rows']} "
             f"training conversations over {len(d['tasks'])} tasks, {d['step']} steps, {d['seconds']:.0f} s), decoder "
             "frozen first, then everything with text conversations mixed in. Held-out tasks through the evals framework "
             "(`vqa-<task>` specs, VQA template, greedy, normalised match): accuracy with the image, the same model asked "
             "the same questions without it, the training set's majority answer per question kind, and chance. The "
             "margin is over the better of the two text-only baselines.", "",
             "| task | with image | text only | majority | chance | margin | n |", "|---|---:|---:|---:|---:|---:|---:|"]
    for task, t in d["tasks"].items():
        w = t["with_image"]
        lines.append(f"| {task} | {w['accuracy']:.3f} ± {w['stderr']:.3f} | {t['text_only']['accuracy']:.3f} | "
                     f"{t['majority']['accuracy']:.3f} | {t['chance']:.3f} | {t['margin_over_text_only']:+.3f} | {w['n']} |")
    lines += ["", f"Held-out text loss (SFT's held-out conversations, assistant tokens): {d['text_heldout_loss_before']:.4f} "
              f"before, {d['text_heldout_loss_after']:.4f} after ({100 * d['text_loss_change']:+.1f}%).", "",
              "Examples (the first held-out items of each task):", ""]
    pics = out / "vision" / "examples"
    for task, t in d["tasks"].items():
        for i, e in enumerate(t["examples"][:2]):
            link = ""
            if (e.get("image") or "").startswith("data:image/png;base64,"):
                import base64
                pics.mkdir(parents=True, exist_ok=True)
                (pics / f"{task}-{i}.png").write_bytes(base64.b64decode(e["image"].split(",", 1)[1]))
                link = f"![{task} {i}](vision/examples/{task}-{i}.png) "
            lines.append(f"- {link}{task}: {e['question']!r} → model `{e['model']!r}`, answer `{e['answer']}`")
    return lines + [""]


def scaling_section(out):
    sc = out / "scaling"
    ladder, record, ver = _read(sc / "ladder.json"), _read(sc / "prediction_loss.json"), _read(sc / "verify_loss.json")
    if not ladder:
        return []
    rows = ladder["runs"]
    lines = ["## Predictable scaling", "",
             f"Ladder (`nanogpt4 scaling`, preset `{ladder['preset']}`): {len(rows)} runs made by the size dial with one "
             "methodology (`nanogpt4/scaling/ladder.py`); compute = 6·N·D + attention, counted by the code before each "
             "run starts. Final losses on fixed held-out windows (sympy code, never trained on; and validation prose).", "",
             "| width | depth | tokens/param | seeds | params | tokens | compute (FLOPs) | heldout_code | val_text | "
             "copying (icl) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted({(r["width"], r["tokens_per_param"]) for r in rows}):
        rs = [r for r in rows if (r["width"], r["tokens_per_param"]) == key]
        mean = lambda m: statistics.mean(r["final"][m] for r in rs)  # noqa: E731
        spread = lambda m: (max(r["final"][m] for r in rs) - min(r["final"][m] for r in rs)) / 2  # noqa: E731
        lines.append(f"| {key[0]} | {rs[0]['depth']} | {key[1]:g} | {len(rs)} | {rs[0]['params']:,} | {rs[0]['tokens']:,} | "
                     f"{rs[0]['compute']:.3g} | {mean('heldout_code'):.4f} ± {spread('heldout_code'):.4f} | "
                     f"{mean('val_text'):.4f} ± {spread('val_text'):.4f} | "
                     f"{statistics.mean(r.get('icl', float('nan')) for r in rs):+.2f} |")
    lines += ["", "(± is half the range over seeds. Copying: held-out code loss at the first 8 positions minus over "
              "the last five eighths of the window, Olsson et al.'s in-context learning score; ~0.5 without in-context copying, ≥ 1 with "
              "it: `ladder.copying`.)", ""]
    if record:
        pred = record["prediction"]
        frac = max(r["compute"] for r in rows) / pred["target_compute"]
        lines += [f"Registered prediction `scaling/prediction_loss.json`, sealed {record['created']} before the target "
                  f"started (sha256 `{record['record_sha256'][:16]}…`, git {record['git_commit'][:12]}): target "
                  f"{pred['target_compute']:.3g} FLOPs; the largest fit run used {frac:.2e} of it "
                  f"({1 / frac:,.0f}× less)"
                  + (f"; the validation runs that chose the law used up to "
                     f"{max(v['compute'] for v in pred['validation_runs']) / pred['target_compute']:.2e} of it"
                     if pred.get("validation_runs") else "")
                  + f". Interval: {pred['level']:.0%} bootstrap over ladder runs.", ""]
    if ver:
        from .scaling import predict
        fitted = list(next(iter(ver["metrics"].values()))["laws"])
        lines += [f"{len(fitted)} laws were fitted on the fit runs and sealed together: "
                  + "; ".join(predict.DESCRIPTIONS.get(law, law) for law in fitted)
                  + f" (N the non-embedding parameters). The registered prediction is {ver['rule']}: the "
                  "capability runs, not in the fit, at the target's horizon (`nanogpt4/scaling/predict.py`; NOTES.md "
                  "compares the laws and the rules).", "",
                  "| metric, law | validation error | weight | predicted | interval | measured | error | in interval |",
                  "|---|---:|---:|---:|---|---:|---:|---|"]
        for m, v in ver["metrics"].items():
            weights = v.get("weights") or {}
            rows_ = list(v["laws"].items()) + ([("combination", v)] if weights else [])
            for law, x in rows_:
                mae = "–" if x.get("validation_mae") is None else f"{x['validation_mae']:.2%}"
                name = f"**{law}** (registered)" if law == v["law"] else law
                weight = f"{weights[law]:.3f}" if law in weights else "–"
                lines.append(f"| {m}, {name} | {mae} | {weight} | {x['predicted']:.4f} | [{x['interval'][0]:.4f}, "
                             f"{x['interval'][1]:.4f}] | {v['measured']:.4f} | **{x['rel_error']:+.2%}** | "
                             f"{'yes' if x['in_interval'] else 'no'} |")
        lines += [""] + [f"![{m}](scaling/fig1_{m}.png)" for m in ver["metrics"]] + [""]
    cap, cap_ver = _read(sc / "capability.json"), _read(sc / "verify_capability.json")
    if cap:
        lines += ["### Capability: pass rate on generated code problems", "",
                  f"Fit runs {', '.join(Path(r).name for r in cap['fit_runs'])}, settings {cap['settings']} "
                  "(`nanogpt4/scaling/capability.py`, sandboxed execution in `nanogpt4/evals/execution.py`)."]
        if not cap["registered"]:
            lines += [f"**No prediction registered**: {cap['reason']}.", ""]
        else:
            lines += [f"{cap['problems_kept']} problems are solved at least once by every fit run.", ""]
        if cap_ver:
            lines += ["| bucket | problems | predicted -E[log pass] | measured | error |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {b['bucket']} | {b['problems']} | {b['predicted_at_actual_compute']:.3f} | {b['measured']:.3f} | "
                      f"{b['rel_error']:+.1%} |" for b in cap_ver["buckets"] + [cap_ver["overall"]]]
            lines += ["", "![capability](scaling/fig2_capability.png)", ""]
    he = _read(sc / "humaneval.json")
    if he:
        lines += [f"Real HumanEval on the target ({he['problems']} problems, {he['settings']}, same sampler and sandbox): "
                  + ", ".join(f"{k} **{v:.3f}**" for k, v in he.items() if k.startswith("pass@"))
                  + f"; {len(he['solved'])} problems solved at least once.", ""]
    hs = _read(sc / "hindsight.json")
    if hs and hs["runs"]:
        t = hs["trend"]
        lines += ["### Inverse scaling: hindsight neglect", "",
                  f"{hs['runs'][0]['n']} generated items (`nanogpt4/scaling/hindsight.py`), options ' Y'/' N' ranked by "
                  f"log-likelihood. Accuracy **{t['direction']}** with compute: slope {t['slope_per_decade']:+.3f} ± "
                  f"{t['stderr']:.3f} per decade of compute.", "",
                  "| run | compute | accuracy | answers Y |", "|---|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['compute']:.3g} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | {r['frac_pred_Y']:.0%} |"
                  for r in hs["runs"]]
        lines += ["", "![hindsight neglect](scaling/fig3_hindsight.png)", ""]
    t = _read(sc / "timings.json")
    if t:
        lines += ["Scaling steps, wall-clock seconds (`scaling/timings.json`): "
                  + ", ".join(f"{k} {v['seconds']}" for k, v in t.items()) + ".", ""]
    return lines


def evals_section(out):
    """The benchmark table of the eval report card (`nanogpt4 report`, evals/report.md has the rest)."""
    summary = _read(out / "evals" / "benchmarks.json")
    if not summary:
        return []
    lines = ["## Evals", "", "The GPT-4 report's benchmarks on the pretrained model (`nanogpt4 report`; the full card with"
             " method, calibration and contamination is [evals/report.md](evals/report.md)). Score ± standard error;"
             " headline = the lower of the score and the score on items the contamination check finds clean.", "",
             "| benchmark | mode | metric | score | chance | shots (asked / used) | items | contaminated | headline |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, v in summary.items():
        if name.startswith("_"):
            continue
        r, c = v["report"], v["contamination"]
        extra = "".join(f" ({k} {x:.3f})" for k, x in r.items() if k.startswith("pass@") and k != "pass@1")
        lines.append(f"| {r.get('benchmark', name)} | {r.get('mode')} | {r.get('metric')}{extra} | {r.get('score', 0):.3f} ± "
                     f"{r.get('stderr', 0):.3f} | {r.get('chance', 0):.3f} | {r.get('shots_requested')} / "
                     f"{r.get('shots_used_mean', 0):.1f} | {r['n']} | {100 * c['contaminated']:.1f}% | "
                     f"{c['headline']:.3f} |")
    comp = summary.get("_compare")
    if comp:
        from .evals.card import compare_lines, compare_verdict
        lines += ["", f"### `{comp['run']}` vs `{comp['run2']}`: letter mode side by side (the report's Appendix B)", "",
                  "Same items, few-shot examples and plain-text prompts for both models (no chat template), so a "
                  "difference is the weights. Difference = second − first; the paired stderr (per-item differences over "
                  "the items both answered, in bold) is the one to read.", ""]
        lines += compare_lines(comp) + ["", compare_verdict(comp["rows"])]
        if (out / "evals" / "truthfulqa.png").exists():
            lines += ["", "![TruthfulQA](evals/truthfulqa.png)", "",
                      "TruthfulQA MC1 of both models ± stderr, chance dashed (the report's Figure 7)."]
    cal = summary.get("_calibration", {})
    lines += ["", "Calibration (MMLU, letter mode" + (", side by side: the report's Figure 8" if comp else "") + "): "
              + ", ".join(f"`{k}` ECE {v['ece']:.3f} ({v['items']} items)" for k, v in cal.items()) + ".",
              "", "![calibration](evals/calibration.png)", ""]
    return lines


def timings_section(out):
    t = _read(out / "timings.json")
    if not t:
        return []
    lines = ["## Stage timings", "", "Wall-clock seconds of the run that did each stage's work (`timings.json`).", "",
             "| stage | seconds | command |", "|---|---:|---|"]
    order = ["data", "tokenizer", "scaling", "long-context", "sample", "serve", "posttrain-data", "sft", "rm", "rlhf",
             "dpo", "behaviour", "vision-data", "vision", "report"]
    for k in sorted(t, key=lambda k: order.index(k) if k in order else len(order)):
        lines.append(f"| {k} | {t[k]['seconds']} | `{t[k]['command']}` |")
    lines.append(f"| **total** | {sum(v['seconds'] for v in t.values()):.1f} | |")
    return lines + [""]


def write(out):
    """Write out/report.md (+ PNGs) from whatever stages have completed; returns its path."""
    out = Path(out)
    metrics = _metrics(out / "pretrain")
    if metrics:
        plot_losses(metrics, out / "loss.png")
        plot_throughput(metrics, out / "throughput.png")
    lines = ["# nanogpt4 report card", "", f"Work directory: `{out}`.", ""]
    for section in (timings_section, corpus_section, tokenizer_section, pretrain_section, long_context_section,
                    samples_section, serve_section, posttrain_section, vision_section, scaling_section, evals_section):
        lines += section(out)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
