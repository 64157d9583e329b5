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


def test_build_app_parses_string_args_and_config_files(tmp_path):
    from treasure.serving.app import build_app

    app = build_app({"checkpoint": "some/ckpt", "max_batch_size": "4", "num_cpus": "0.5"})
    assert app is not None
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("# .venv/bin/serve run treasure.serving.app:build_app config=serve.yaml\nserve:\n  checkpoint: x\n")
    assert build_app({"config": str(cfg), "max_tokens_limit": "256"}) is not None
    with pytest.raises(ConfigError, match="max_batch_size"):
        build_app({"checkpoint": "x", "max_batch_size": "0"})
    with pytest.raises(ConfigError, match="bogus"):
        build_app({"checkpoint": "x", "bogus": "1"})


def test_auth_docstring_examples_hold():
    import doctest

    import treasure.serving.auth as auth

    result = doctest.testmod(auth, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_build_app_puts_no_secret_in_the_application(monkeypatch):
    """The token stays in the replicas' own environment: nothing of it in the bound application
    (its args and options are what the dashboard shows)."""
    from ray import cloudpickle

    from treasure.serving.app import build_app

    monkeypatch.setenv("TREASURE_CANARY_TOKEN", "canary-3c1f9e")
    app = build_app({"checkpoint": "runs/x", "auth_token_env": "TREASURE_CANARY_TOKEN"})
    blob = cloudpickle.dumps(app)  # what goes to the controller: the deployment, its options and args
    assert b"canary-3c1f9e" not in blob and b"TREASURE_CANARY_TOKEN" in blob
