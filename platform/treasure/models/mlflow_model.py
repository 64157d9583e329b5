"""A checkpoint as a real MLflow model: a pyfunc model that renders markers itself.

Every model version the platform registers (the train stage's `treasure-marked` / `treasure-baseline`,
the tuning search's best trial) is logged with `log_model`: an MLmodel file, the checkpoint as the
model's `checkpoint` artifact, and this package as its code, so the folder works without this
repository and without a tracking server:

    import mlflow
    model = mlflow.pyfunc.load_model("models:/treasure-marked/1")
    model.predict([{"prompt": "Why is the sky blue?", "markers": {"length_bucket": "concise"}}],
                  params={"max_tokens": 128})
    #  -> DataFrame: text, markers {requested, inferred}, finish_reason, usage, error

Input: a list of row dicts or a DataFrame (`prompt`; optional `markers` as an object or its JSON text,
`max_tokens`, `temperature`, `top_p`, `seed`); the generation fields may also come as call `params`.
Pass rows as a list: MLflow turns a single dict into columns, which flattens a nested `markers`.

    mlflow models serve -m models:/treasure-marked/1 --env-manager local   # POST /invocations

`predict` goes through the serving core (`treasure.serving.server.ModelServer`, transformers engine):
the same marker validation, prompt rendering, block budget and block stripping as the HTTP server,
so a model answers the same way behind `serve run`, `pyfunc.load_model` and `mlflow models serve`.
A row whose markers do not fit the taxonomy, or whose prompt is too long, gets its reason in `error`
(and no text); the other rows of the batch are answered.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from treasure.models.checkpoint import META, MODEL_ARTIFACT, MODEL_PATH

PARAMS = ("max_tokens", "temperature", "top_p", "seed")  # generation fields, per row or per call (`params`)
OUTPUT_COLUMNS = ("text", "markers", "finish_reason", "usage", "error")
# What the model needs at load time (the package travels as code; these come from the registry).
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "pydantic", "pyyaml", "pandas", "mlflow")


class MarkerModel(mlflow.pyfunc.PythonModel):
    """prompt + markers -> text + requested / inferred markers, through the serving core."""

    def load_context(self, context) -> None:
        from treasure.serving.config import ServeConfig
        from treasure.serving.server import ModelServer

        settings = {"engine": "transformers", **(context.model_config or {})}
        self.server = ModelServer(ServeConfig(checkpoint=context.artifacts[MODEL_ARTIFACT], **settings))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        rows = answer_rows(self.server, request_rows(model_input), params or {})
        # object columns: a missing text or error stays None (pandas would turn it into NaN)
        return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in OUTPUT_COLUMNS})


def request_rows(model_input) -> list[dict[str, Any]]:
    """The rows of a predict input: a DataFrame, a list of dicts, one dict, or a bare prompt string.

    >>> request_rows("hi")
    [{'prompt': 'hi'}]
    >>> request_rows({"prompt": "hi", "markers": '{"length_bucket": "concise"}'})[0]["markers"]
    {'length_bucket': 'concise'}
    """
    import pandas as pd

    if isinstance(model_input, str):
        rows = [{"prompt": model_input}]
    elif isinstance(model_input, dict):
        rows = [model_input]
    elif isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict("records")
    else:
        rows = list(model_input)
    out = []
    for row in rows:
        row = {k: v for k, v in dict(row).items() if not _missing(v)}
        if isinstance(row.get("markers"), str):  # a JSON column (CSV, `mlflow models serve` dataframe_split)
            try:
                row["markers"] = json.loads(row["markers"])
            except ValueError:
                pass  # left as text: validation names it per row
        out.append(row)
    return out


def answer_rows(server, rows: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """One output row per input row, in order; invalid rows carry `error`, the rest are generated together."""
    from pydantic import ValidationError

    from treasure.serving.api_models import GenerateRequest
    from treasure.serving.limits import LimitError
    from treasure.serving.prompting import MarkerError

    out: list[dict[str, Any] | None] = [None] * len(rows)
    prepared, where = [], []
    for i, row in enumerate(rows):
        try:
            fields = {k: row[k] for k in ("prompt", "markers", *PARAMS) if k in row}
            given = {k: params[k] for k in PARAMS if params.get(k) is not None}
            request = GenerateRequest(**{**given, **fields})
            prepared.append(server.prepare_generate(request))
            where.append(i)
        except (ValidationError, MarkerError, LimitError, TypeError) as e:
            out[i] = {"text": None, "markers": None, "finish_reason": None, "usage": None, "error": _reason(e)}
    for i, item, gens in zip(where, prepared, server.generate_isolated(prepared) if prepared else []):
        if isinstance(gens, Exception):
            out[i] = {"text": None, "markers": None, "finish_reason": None, "usage": None, "error": _reason(gens)}
            continue
        body = server.response_for(item, server.results_for(item, gens))
        out[i] = {**{k: body[k] for k in ("text", "markers", "finish_reason", "usage")}, "error": None}
    return out


def save_model(checkpoint: str | Path, path: str | Path) -> Path:
    """Write the MLflow model folder (MLmodel, code, artifacts/checkpoint) of a checkpoint to `path`."""
    package = Path(__file__).resolve().parents[1]  # platform/treasure: travels with the model
    with tempfile.TemporaryDirectory(prefix="treasure-model-") as staging:
        # MLflow names an artifact folder after its source (and refuses symlinks): a hard-linked copy
        # named `checkpoint` gives every model the same layout (artifacts/checkpoint) at no copy cost.
        named = Path(staging) / MODEL_ARTIFACT
        shutil.copytree(checkpoint, named, copy_function=_link_or_copy)
        mlflow.pyfunc.save_model(
            path=str(path), python_model=MarkerModel(), artifacts={MODEL_ARTIFACT: str(named)},
            code_paths=[str(package)], pip_requirements=requirements(), model_config={"engine": "transformers"},
            signature=signature(), metadata={"treasure": _meta(Path(checkpoint))})
    return Path(path)


def log_model(run_id: str, checkpoint: str | Path) -> str:
    """Log the checkpoint's MLflow model to run `run_id` under `model/`; returns the model's artifact URI."""
    from mlflow import MlflowClient

    client = MlflowClient()
    folder = Path(tempfile.mkdtemp(prefix="treasure-mlflow-model-"))
    try:
        save_model(checkpoint, folder / MODEL_PATH)
        client.log_artifacts(run_id, str(folder / MODEL_PATH), MODEL_PATH)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return f"{client.get_run(run_id).info.artifact_uri}/{MODEL_PATH}"


def signature():
    """prompt (required) and markers (any JSON object, or its JSON text) per row; the generation fields
    per row or as call `params` (MLflow drops params a signature does not declare)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "prompt"), ColSpec(AnyType(), "markers", required=False),
                     ColSpec("long", "max_tokens", required=False), ColSpec("double", "temperature", required=False),
                     ColSpec("double", "top_p", required=False), ColSpec("long", "seed", required=False)])
    params = ParamSchema([ParamSpec("max_tokens", "long", None), ParamSpec("temperature", "double", None),
                          ParamSpec("top_p", "double", None), ParamSpec("seed", "long", None)])
    return ModelSignature(inputs=inputs, params=params)


def requirements() -> list[str]:
    """Pinned requirements of the installed versions (local build tags such as +cpu left out: pip
    elsewhere cannot resolve them)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _meta(checkpoint: Path) -> dict[str, Any]:
    meta = json.loads((checkpoint / META).read_text()) if (checkpoint / META).exists() else {}
    return {k: meta.get(k) for k in ("markers", "taxonomy_version", "data_manifest_id", "step")}


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _missing(value) -> bool:
    try:
        return value is None or (isinstance(value, float) and value != value)  # NaN: a column absent in this row
    except TypeError:
        return False


def _reason(error: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in error.errors())
    return str(error)
