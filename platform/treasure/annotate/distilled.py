"""The distilled tagger, pure part: teacher labels → a small head per category over sentence
embeddings → calibrated answers for every row (no Ray; the Ray shell is annotate/student.py).

Teacher labels are `Example`s (one per distinct prompt); `fit_student(X, examples, ...)` trains a
softmax head per category on the rows that category is labelled on, holds a seeded slice out to
measure the student's agreement with the teacher and to fit a temperature (calibrated confidence),
and returns a `Student` that saves to / loads from two files (`student.json`, `heads.npz`).

>>> import numpy as np
>>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]] * 5, dtype=np.float32)
>>> ex = [Example(f"t{i}", {"domain": "Code" if x[0] > 0.5 else "Math"}, {"domain": "metadata"}) for i, x in enumerate(X)]
>>> student = fit_student(X, ex, ["domain"], holdout=0.0)
>>> [student.heads["domain"].labels[i] for i in student.heads["domain"].predict(X[:4])[0]]
['Code', 'Code', 'Math', 'Math']
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from treasure.annotate.merge import Candidate, prov
from treasure.annotate.tagger import UNSPECIFIED, outcome

DISTILLED = "distilled"


@dataclass
class Example:
    """One teacher-labelled prompt: its whole text (the encoder truncates it), {category: value}, and
    {category: the source that gave it}."""

    text: str
    labels: dict[str, str]
    by: dict[str, str]


def text_key(text: str) -> str:
    """Identity of a prompt across sources (whitespace-collapsed), so one prompt is one example.

    >>> text_key("  Hello\\n  world ") == text_key("Hello world")
    True
    """
    return hashlib.sha256(re.sub(r"\s+", " ", text).strip().encode("utf-8")).hexdigest()[:32]


def student_text(row: dict, max_chars: int) -> str:
    """What the student reads of a row: its prompt, truncated (the encoder truncates again in tokens)."""
    return str(row.get("prompt") or "")[:max_chars]


def merge_examples(*sources: list[Example]) -> list[Example]:
    """One example per distinct prompt; where several sources label a prompt's category, the earlier
    source wins (the teacher's `sources` order).

    >>> a = [Example("x", {"domain": "Code"}, {"domain": "file"})]
    >>> b = [Example("x ", {"domain": "Math", "task": "Reasoning"}, {"domain": "metadata", "task": "metadata"})]
    >>> merge_examples(a, b)[0].labels
    {'domain': 'Code', 'task': 'Reasoning'}
    """
    out: dict[str, Example] = {}
    for examples in sources:
        for e in examples:
            have = out.setdefault(text_key(e.text), Example(e.text, {}, {}))
            for cat, value in e.labels.items():
                if cat not in have.labels:
                    have.labels[cat], have.by[cat] = value, e.by[cat]
    return list(out.values())


def read_label_file(text: str, categories: list[str], source: str = "file") -> list[Example]:
    """Examples from a hand-labelled JSONL (`prompt` + a field per category; null = not labelled).

    >>> read_label_file('{"prompt": "2+2?", "domain": "Math", "format": null}', ["domain", "format"])[0].labels
    {'domain': 'Math'}
    """
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"label file line {n}: needs a string `prompt`")
        labels = {c: str(row[c]) for c in categories if row.get(c) is not None}
        out.append(Example(row["prompt"], labels, {c: source for c in labels}))
    return out


def metadata_examples(rows: list[dict], mapping: dict, categories: list[str]) -> list[Example]:
    """Examples from the labels the config's `metadata:` mapping gives corpus rows (rows without one, or with
    unreadable metadata, give none; the stage records those rows' errors itself).

    >>> from treasure.annotate.config import SourceMapping
    >>> m = {"chat": SourceMapping(markers={"domain": "Conversation"})}
    >>> [e.labels for e in metadata_examples([{"source": "chat", "prompt": "hi"}, {"source": "x", "prompt": "yo"}], m, ["domain"])]
    [{'domain': 'Conversation'}]
    """
    from treasure.annotate.metadata import metadata_markers

    out = []
    for row in rows:
        try:
            markers = metadata_markers(row.get("source") or "", row.get("metadata"), None, mapping)
        except ValueError:
            continue
        labels = {c: markers[c] for c in categories if c in markers}
        text = str(row.get("prompt") or "")
        if labels and text.strip():
            out.append(Example(text, labels, {c: "metadata" for c in labels}))
    return out


def holdout_mask(keys: list[str], share: float, seed: int) -> np.ndarray:
    """True for the examples held out (seeded hash of the prompt, so the split never depends on order)."""
    if share <= 0:
        return np.zeros(len(keys), dtype=bool)
    cut = int(share * 2**32)
    return np.array([int(hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()[:8], 16) < cut for k in keys], dtype=bool)


# --- the head: softmax regression (or one hidden layer) + temperature ---

@dataclass
class Head:
    """One category's classifier over embeddings: logits = MLP(x) / temperature."""

    category: str
    labels: list[str]
    params: dict[str, np.ndarray]  # W0, b0[, W1, b1]: layer i is x @ W_i.T + b_i, ReLU between layers
    temperature: float = 1.0
    stats: dict = field(default_factory=dict)

    def logits(self, X: np.ndarray) -> np.ndarray:
        h = X
        layers = len(self.params) // 2
        for i in range(layers):
            h = h @ self.params[f"W{i}"].T + self.params[f"b{i}"]
            if i < layers - 1:
                h = np.maximum(h, 0.0)
        return h  # (N, C)

    def proba(self, X: np.ndarray) -> np.ndarray:
        z = self.logits(X) / self.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label index, calibrated confidence) per row."""
        p = self.proba(X)
        best = p.argmax(axis=1)
        return best, p[np.arange(len(p)), best]


def train_head(X: np.ndarray, y: np.ndarray, n_classes: int, *, hidden: int = 0, l2: float = 1e-4,
               balanced: bool = True, seed: int = 0, max_iter: int = 200,
               sample_weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fit the head's weights by full-batch L-BFGS on the weighted mean cross-entropy + l2 * ||W||².

    A row weighs its class weight (balanced: every class's rows weigh the same in all) times its
    `sample_weight` (default 1), and the mean is over those weights, as torch's weighted cross-entropy is.
    """
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    dims = [X.shape[1]] + ([hidden] if hidden else []) + [n_classes]
    layers = [torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:])]
    net = torch.nn.Sequential(*[m for lin in layers for m in (lin, torch.nn.ReLU())][:-1])
    sw = torch.ones(len(yt)) if sample_weight is None else torch.from_numpy(np.asarray(sample_weight, dtype=np.float32))
    counts = torch.bincount(yt, weights=sw, minlength=n_classes).float()
    class_weight = (counts.sum() / (n_classes * counts.clamp(min=1e-12))) if balanced else torch.ones(n_classes)
    row_weight = class_weight[yt] * sw
    row_weight = row_weight / row_weight.sum()
    # Stops when the gradient is small (1e-5), not when separable data lets the weights grow for ever.
    opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-5, tolerance_change=1e-7)

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.cross_entropy(net(xt), yt, reduction="none") * row_weight).sum()
        loss = loss + l2 * sum((lin.weight ** 2).sum() for lin in layers)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    out = {}
    for i, lin in enumerate(layers):
        out[f"W{i}"], out[f"b{i}"] = lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()
    return out


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimizes the held-out negative log-likelihood (Guo et al. 2017); argmax unchanged."""
    best, best_nll = 1.0, math.inf
    for t in np.exp(np.linspace(math.log(0.05), math.log(20.0), 121)):
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        nll = float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def fit_head(X: np.ndarray, values: list[str], category: str, mask_out: np.ndarray, *, hidden: int = 0,
             l2: float = 1e-4, balanced: bool = True, seed: int = 0, sample_weight: np.ndarray | None = None) -> Head:
    """Train on the rows not in `mask_out` (each weighing its `sample_weight`); calibrate and measure agreement on
    the rows in it."""
    labels = sorted(set(values))
    index = {v: i for i, v in enumerate(labels)}
    y = np.array([index[v] for v in values])
    train = ~mask_out if (~mask_out).sum() and len(set(y[~mask_out])) > 1 else np.ones(len(y), dtype=bool)
    params = train_head(X[train], y[train], len(labels), hidden=hidden, l2=l2, balanced=balanced, seed=seed,
                        sample_weight=None if sample_weight is None else sample_weight[train])
    head = Head(category, labels, params)
    held = mask_out & ~train
    stats = {"teacher_rows": int(len(y)), "train_rows": int(train.sum()), "heldout_rows": int(held.sum()),
             "labels": {v: int((y == i).sum()) for i, v in enumerate(labels)}}
    if held.sum():
        head.temperature = fit_temperature(head.logits(X[held]), y[held])
        pred, _ = head.predict(X[held])
        stats["agreement"] = round(float((pred == y[held]).mean()), 4)
    head.stats = stats
    return head


# --- the student: heads + how they were made; save / load ---

@dataclass
class Student:
    """The distilled tagger: an encoder's name and settings, and one head per category."""

    encoder: dict  # {"model", "max_tokens", "dim"}
    heads: dict[str, Head]
    info: dict = field(default_factory=dict)  # teacher, lineage, evaluation (written to student.json)

    def to_files(self) -> dict[str, bytes]:
        """{'student.json': ..., 'heads.npz': ...}: plain JSON + numpy arrays (no pickle)."""
        meta = {"encoder": self.encoder, "info": self.info,
                "heads": {c: {"labels": h.labels, "temperature": h.temperature, "layers": len(h.params) // 2, "stats": h.stats}
                          for c, h in self.heads.items()}}
        buf = io.BytesIO()
        np.savez(buf, **{f"{c}.{k}": v for c, h in self.heads.items() for k, v in h.params.items()})
        return {"student.json": json.dumps(meta, indent=2, ensure_ascii=False).encode(), "heads.npz": buf.getvalue()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "Student":
        meta = json.loads(files["student.json"])
        arrays = np.load(io.BytesIO(files["heads.npz"]), allow_pickle=False)
        heads = {}
        for c, h in meta["heads"].items():
            params = {f"{k}{i}": arrays[f"{c}.{k}{i}"] for i in range(h["layers"]) for k in ("W", "b")}
            heads[c] = Head(c, h["labels"], params, h["temperature"], h["stats"])
        return cls(meta["encoder"], heads, meta["info"])


def fit_student(X: np.ndarray, examples: list[Example], categories: list[str], *, holdout: float = 0.2, hidden: int = 0,
                l2: float = 1e-4, balanced: bool = True, seed: int = 0, encoder: dict | None = None,
                source_weights: dict[str, float] | None = None) -> Student:
    """One head per category with at least two teacher classes; X[i] embeds examples[i].text.

    `source_weights` ({teacher source: weight}, default 1 each): how much one example labelled by that
    source counts in the head's loss; e.g. a few hand labels read prompt by prompt against many
    source-wide metadata labels.
    """
    keys = [text_key(e.text) for e in examples]
    out_all = holdout_mask(keys, holdout, seed)
    heads, skipped = {}, {}
    for cat in categories:
        idx = np.array([i for i, e in enumerate(examples) if cat in e.labels], dtype=np.int64)
        values = [examples[i].labels[cat] for i in idx]
        if len(set(values)) < 2:
            skipped[cat] = f"teacher gives {len(set(values))} class(es) on {len(idx)} rows: no head"
            continue
        weights = None
        if source_weights:
            weights = np.array([source_weights.get(examples[i].by[cat], 1.0) for i in idx], dtype=np.float32)
        heads[cat] = fit_head(X[idx], values, cat, out_all[idx], hidden=hidden, l2=l2, balanced=balanced, seed=seed,
                              sample_weight=weights)
        heads[cat].stats["by_source"] = dict(sorted(_count(examples[i].by[cat] for i in idx).items()))
    return Student(encoder or {}, heads, {"skipped": skipped} if skipped else {})


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


# --- applying the student: answers → candidates ---

def student_candidates(student: Student, X: np.ndarray, todo: list[list[str]], allowed: dict[str, tuple[str, ...]],
                       min_confidence: float, version: str = "") -> list[list[Candidate]]:
    """Candidates (provenance `distilled`, with the calibrated confidence) for the categories each row asks for.

    A best label below `min_confidence` becomes `Unspecified` where the category has that value and no
    marker otherwise (the provenance keeps the label it would have been, in `raw`, and a note), as the
    LLM tagger does (tagger.outcome). A category without a head is recorded with a note, no value.
    """
    preds = {c: h.predict(X) for c, h in student.heads.items()}
    model = student.encoder.get("model")
    out: list[list[Candidate]] = []
    for i, cats in enumerate(todo):
        row = []
        for cat in cats:
            if cat not in preds:
                row.append(Candidate(cat, None, prov(DISTILLED, model, version, note="unspecified: no student head for this category")))
                continue
            best, conf = preds[cat][0][i], float(preds[cat][1][i])
            label = student.heads[cat].labels[best]
            labels = allowed[cat]
            value, note = outcome(cat, labels, label, conf, min_confidence)
            row.append(Candidate(cat, value, prov(DISTILLED, model, version, round(conf, 4), label, note)))
        out.append(row)
    return out


def teacher_labels(examples: list[Example], sources: dict[str, dict]) -> str:
    """JSONL of the teacher's labels that are not metadata's (the label file's, the LLM's), keyed by prompt: the
    apply step gives a row whose prompt the teacher labelled that label (it wins over the student by precedence).
    `sources` = {source: provenance fields}, e.g. {"file": {"version": path}}.

    >>> line = teacher_labels([Example("2+2?", {"domain": "Math", "task": "Reasoning"}, {"domain": "file", "task": "metadata"})],
    ...                       {"file": {"version": "hand.jsonl"}})
    >>> json.loads(line)["labels"]
    {'domain': ['Math', {'by': 'file', 'model': None, 'version': 'hand.jsonl', 'confidence': None, 'raw': None}]}
    """
    lines = []
    for e in examples:
        labels = {c: [v, prov(e.by[c], **sources[e.by[c]])] for c, v in e.labels.items() if e.by[c] in sources}
        if labels:
            lines.append(json.dumps({"key": text_key(e.text), "labels": labels}, ensure_ascii=False))
    return "\n".join(lines) + ("\n" if lines else "")


def teacher_candidates(known: dict[str, dict[str, list]], texts: list[str], todo: list[list[str]]) -> list[list[Candidate]]:
    """The teacher's own labels (from `teacher_labels`, parsed to {key: {category: [value, provenance]}}) for the
    rows whose prompt the teacher labelled."""
    out = []
    for text, cats in zip(texts, todo):
        labels = known.get(text_key(text), {})
        out.append([Candidate(c, labels[c][0], labels[c][1]) for c in cats if c in labels])
    return out


# --- scoring on a hand-labelled set ---

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n.

    >>> [round(v, 3) for v in wilson(50, 100)]
    [0.404, 0.596]
    """
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def score(gold: list[str], pred: list[str]) -> dict:
    """Accuracy with its Wilson 95% interval and the majority-class baseline on the same rows."""
    n = len(gold)
    k = sum(g == p for g, p in zip(gold, pred))
    counts = _count(gold)
    major = max(counts, key=counts.get) if counts else None
    lo, hi = wilson(k, n)
    return {"n": n, "correct": k, "accuracy": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)],
            "majority": major, "majority_accuracy": round(counts[major] / n, 4) if n else None}


def cross_validate(X: np.ndarray, examples: list[Example], X_eval: np.ndarray, gold: list[Example], categories: list[str], *,
                   folds: int = 5, min_confidence: float = 0.0, seed: int = 0, **fit) -> dict:
    """Accuracy on a hand-labelled set by k-fold: fold f's prompts are scored by a student trained on every teacher
    example except fold f's prompts (whatever source labelled them), so no scored prompt was ever trained on.

    Per category: `argmax` (the head's best label) and `at_threshold` (below `min_confidence` the answer is
    Unspecified, which is right only where the gold label is Unspecified), each with its Wilson 95% interval
    and the majority-class baseline.
    """
    eval_keys = [text_key(g.text) for g in gold]
    fold_of = np.array([int(hashlib.sha256(f"{seed}:fold:{k}".encode()).hexdigest()[:8], 16) % folds for k in eval_keys])
    teacher_keys = [text_key(e.text) for e in examples]
    preds: dict[str, list] = {c: [None] * len(gold) for c in categories}
    for f in range(folds):
        scored = set(np.array(eval_keys)[fold_of == f].tolist())
        keep = np.array([k not in scored for k in teacher_keys], dtype=bool)
        student = fit_student(X[keep], [e for e, k in zip(examples, keep) if k], categories, seed=seed, **fit)
        rows = np.flatnonzero(fold_of == f)
        for cat, head in student.heads.items():
            best, conf = head.predict(X_eval[rows])
            for r, b, c in zip(rows, best, conf):
                preds[cat][r] = (head.labels[b], float(c))
    out = {}
    for cat in categories:
        rows = [i for i, g in enumerate(gold) if cat in g.labels]
        if not rows or any(preds[cat][i] is None for i in rows):
            continue
        g = [gold[i].labels[cat] for i in rows]
        argmax = [preds[cat][i][0] for i in rows]
        thresholded = [p if c >= min_confidence else UNSPECIFIED for p, c in (preds[cat][i] for i in rows)]
        out[cat] = {"folds": folds, "argmax": score(g, argmax),
                    "at_threshold": {**score(g, thresholded), "min_confidence": min_confidence,
                                     "unspecified_share": round(sum(p == UNSPECIFIED and a != UNSPECIFIED
                                                                    for p, a in zip(thresholded, argmax)) / len(rows), 4)}}
    return out

