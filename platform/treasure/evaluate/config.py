"""The evaluate stage's config: which models, which held-out data, how many prompts per measurement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from treasure.cluster import unset
from treasure.config import StrictModel
from treasure.resources import Pool
from treasure.models.engine import SamplingParams
from treasure.evaluate.judge import JudgeConfig


class GenerationConfig(StrictModel):
    """How answers are generated (Ray Data over an actor pool of engines)."""

    backend: Literal["transformers", "vllm"] = Field("transformers", description="Engine backend (treasure.models.engine).")
    device: str = Field("cpu", description="torch device of each engine actor.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, exclude_if=unset, description="Weights dtype; None: bfloat16 for vllm where the hardware has it natively, else float32.")
    pool: Pool = Field(default_factory=Pool, description="Each model's engine actors (Ray Data actor pool): count, "
                       "CPUs, GPUs and custom resources each, e.g. {eval_node: 0.01} to run them only on such nodes.")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts per Ray Data batch and per forward batch.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_tokens=160), description="Sampling for every generated answer.")


class LengthControlConfig(StrictModel):
    """AlpacaEval-LI style: a word limit N per prompt, up to four conditions (treasure.evaluate.length_control)."""

    prompts: int = Field(40, ge=0, le=100000, description="Held-out prompts (0 skips length control).")
    length_marker: Literal["length_bucket", "length_tokens"] = Field("length_bucket", description="Marker fixed in the 'marker fixed' condition.")
    limits: list[int] = Field(default_factory=list, description="Word limits N cycled over prompts (length_tokens only; length_bucket takes its buckets' bounds).")
    bucket_values: list[str] = Field(default_factory=list, description="length_bucket: the bounded buckets to test (empty: all of them).")
    instruction: str = Field("Answer in at most {n} words.", description="Natural-language limit appended to the prompt ({n} is the limit).")
    prompts_over_limit: bool = Field(
        True, description="Draw only held-out prompts whose reference answer (annotated length_tokens) is longer than the "
        "smallest limit: like AlpacaEval-LI, the limit then binds, since an unconstrained answer would break it. "
        "false: any held-out prompt (most short-answer prompts then pass under every condition).")
    copy_condition: bool = Field(
        True, description="Also measure 'marked_marker_copy': the length marker fixed in the prompt only (no prefill), so the "
        "model must copy it into its own block (the paper's behaviour), next to 'marked_marker' in the same run. Left out "
        "when evaluate.prefill is false, since 'marked_marker' is then that very condition.")


class CategoryConfig(StrictModel):
    """Marker inference and control adherence sizes."""

    inference_prompts: int = Field(60, ge=0, le=100000, description="Held-out prompts for marker inference (0 skips it).")
    inference_categories: list[str] = Field(default_factory=lambda: ["domain", "task", "format", "language", "length_bucket"], description="Categories whose inferred value is compared with the annotation.")
    adherence_categories: list[str] = Field(default_factory=lambda: ["length_bucket", "language", "format", "code_type"], description="Categories fixed one at a time and re-annotated from the answer.")
    adherence_prompts_per_value: int = Field(8, ge=0, le=10000, description="Prompts per fixed (category, value) (0 skips adherence).")
    adherence_max_values: int = Field(6, ge=1, le=1000, description="Most values per category (the most frequent in the data first).")
    adherence_length_over_limit: bool = Field(
        True, description="length_bucket adherence draws only held-out prompts whose reference answer (annotated length_tokens) "
        "is longer than the smallest bucket's limit, so asking for that bucket binds (as length_control.prompts_over_limit). "
        "false: the same prompts as the other categories.")


class WinRateConfig(StrictModel):
    """Pairwise comparisons against the baseline; measured only with a judge (judge.type local or http)."""

    prompts: int = Field(30, ge=0, le=100000, description="Held-out prompts for win rates (0 skips them).")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The pairwise judge.")
    bootstrap_resamples: int = Field(2000, ge=100, le=100000, description="Bootstrap resamples for win-rate intervals.")


class EvaluateConfig(StrictModel):
    """Evaluate a baseline / marked pair on held-out annotated examples."""

    input: str = Field(description="Annotated dataset URI (annotate stage output).")
    baseline: str = Field(description="Baseline checkpoint (trained without markers).")
    marked: str = Field(description="Marked checkpoint (trained with markers).")
    output: str = Field(description="Where the report, metrics and generations are published.")
    experiment: str = Field("treasure-hunt", description="MLflow experiment name.")
    seed: int = Field(0, ge=0, description="Seed for prompt sampling, generation and bootstrap.")
    heldout_seed: int = Field(0, ge=0, description="Seed of the held-out split (must equal training's).")
    heldout_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="Share of examples held out (must equal training's).")
    max_prompt_chars: int = Field(1000, ge=10, le=1000000, description="Held-out prompts longer than this are not used (a small model's context must hold prompt + answer).")
    tail_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="A marker value under this share of rows is in the tail band.")
    prefill: bool = Field(
        True, description="Write the requested markers as the start of the marked model's own block (treasure.template."
        "render_request, as serving does), so it cannot contradict them. false: the paper's copy-only behaviour (the "
        "markers only in the prompt; the model copies them into its block itself).")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Generation settings.")
    length_control: LengthControlConfig = Field(default_factory=LengthControlConfig, description="Length-instruction control.")
    categories: CategoryConfig = Field(default_factory=CategoryConfig, description="Marker inference and adherence.")
    win_rate: WinRateConfig = Field(default_factory=WinRateConfig, description="Win rates against the baseline.")
    force: bool = Field(False, description="Recompute even when output holds a committed report of this config.")

    @model_validator(mode="after")
    def _limits_positive(self) -> "EvaluateConfig":
        if any(n < 1 for n in self.length_control.limits):
            raise ValueError("length_control.limits must be positive word counts")
        return self
