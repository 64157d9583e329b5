"""The deploy config and the builder: serve_config.yaml is a valid Serve deploy config whose args
are a valid ServeConfig, and build_app turns args (strings from `serve run`) into the app."""

from __future__ import annotations

import pytest
import yaml

from treasure.config import ConfigError
from treasure.serving.config import ServeConfig


def test_serve_config_yaml_is_a_valid_deploy_config(repo):
    from ray.serve.schema import ServeDeploySchema

    text = (repo / "serving" / "serve_config.yaml").read_text()
    assert text.startswith("# Deploy") and "serve deploy serving/serve_config.yaml" in text
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    app = schema.applications[0]
    assert app.import_path == "treasure.serving.app:build_app"
    ServeConfig.model_validate(app.args)
    dep = app.deployments[0]
    assert dep.name == "TreasureServer" and dep.autoscaling_config["max_replicas"] >= 2
    assert dep.max_queued_requests > 0  # bounded queue: overload answers 503
    assert schema.http_options.host == "127.0.0.1"


def _bound(app) -> tuple[object, ServeConfig]:
    """(the application's deployment, the ServeConfig its replicas are constructed with)."""
    deployment = app._bound_deployment
    (config_json,) = deployment.init_args
    return deployment, ServeConfig.model_validate_json(config_json)


def test_build_app_parses_string_args_and_config_files(tmp_path):
    from treasure.serving.app import build_app

    app = build_app({"checkpoint": "some/ckpt", "max_batch_size": "4", "num_cpus": "0.5", "max_ongoing_requests": "3",
                     "max_queued_requests": "7", "engine": "transformers"})
    deployment, config = _bound(app)
    # The strings are parsed into the replicas' config, and the Serve options come from it.
    assert (config.checkpoint, config.max_batch_size, config.num_cpus, config.engine) == ("some/ckpt", 4, 0.5, "transformers")
    assert deployment.name == "TreasureServer" and deployment.init_kwargs == {}
    assert deployment.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert (deployment.max_ongoing_requests, deployment.max_queued_requests) == (3, 7)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("# .venv/bin/serve run treasure.serving.app:build_app config=serve.yaml\n"
                   "serve:\n  checkpoint: x\n  max_tokens_limit: 100\n  default_max_tokens: 64\n")
    _, from_file = _bound(build_app({"config": str(cfg), "max_tokens_limit": "256"}))
    # The file's section, with key=value arguments on top; everything else keeps its default.
    assert (from_file.checkpoint, from_file.max_tokens_limit, from_file.default_max_tokens) == ("x", 256, 64)
    assert from_file.max_batch_size == ServeConfig.model_fields["max_batch_size"].default
    with pytest.raises(ConfigError, match="max_batch_size"):
        build_app({"checkpoint": "x", "max_batch_size": "0"})
    with pytest.raises(ConfigError, match="bogus"):
        build_app({"checkpoint": "x", "bogus": "1"})


def test_build_app_puts_no_secret_in_the_application(monkeypatch):
    """The token stays in the replicas' own environment: nothing of it in the bound application
    (its args and options are what the dashboard shows)."""
    from ray import cloudpickle

    from treasure.serving.app import build_app

    monkeypatch.setenv("TREASURE_CANARY_TOKEN", "canary-3c1f9e")
    app = build_app({"checkpoint": "runs/x", "auth_token_env": "TREASURE_CANARY_TOKEN"})
    blob = cloudpickle.dumps(app)  # what goes to the controller: the deployment, its options and args
    assert b"canary-3c1f9e" not in blob and b"TREASURE_CANARY_TOKEN" in blob
