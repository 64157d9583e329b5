"""Guards the layout: `platform/` is a source folder, never a package shadowing the stdlib."""

import subprocess
import sys

import pytest


def test_no_platform_package(repo):
    assert not (repo / "platform" / "__init__.py").exists(), "platform/__init__.py shadows the stdlib 'platform' module"
    assert (repo / "platform" / "treasure" / "__init__.py").exists()


def test_stdlib_platform_from_repo_root_python_c(repo):
    out = subprocess.run(
        [sys.executable, "-c", "import platform, numpy; print(platform.__file__, platform.python_version())"],
        cwd=repo, capture_output=True, text=True, check=True,
    )
    assert "platform.py" in out.stdout and "/platform/" not in out.stdout.split()[0].replace("platform.py", "")


def test_stdlib_platform_under_pytest(repo, tmp_path):
    """`make test` runs `python -m pytest` from the repository root, which puts the root first on
    sys.path. This process imported `platform` before any test ran, so asking it proves nothing: a
    fresh pytest process, started the way `make test` starts one, runs a probe test instead."""
    import os
    import sysconfig

    probe = tmp_path / "test_platform_probe.py"
    stdlib = os.path.realpath(os.path.join(sysconfig.get_paths()["stdlib"], "platform.py"))
    probe.write_text(
        "import os, platform, treasure\n"
        "def test_probe():\n"
        f"    assert os.path.realpath(platform.__file__) == {stdlib!r}, platform.__file__\n"
        "    assert treasure.__file__.endswith(os.path.join('platform', 'treasure', '__init__.py')), treasure.__file__\n"
        "    assert platform.python_version()\n"
    )
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
                         cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "1 passed" in out.stdout


@pytest.mark.timeout(180)
def test_stdlib_platform_in_ray_worker(repo):
    code = (
        "import ray, os\n"
        "ray.init(num_cpus=1, include_dashboard=False, _node_ip_address='127.0.0.1')\n"
        "@ray.remote\n"
        "def f():\n"
        "    import platform, treasure\n"
        "    return platform.__file__, platform.python_version(), treasure.__file__\n"
        "print(ray.get(f.remote()))\n"
        "ray.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lib/python3" in out.stdout and "treasure" in out.stdout
