"""Packaging: `make run` installs the runtime dependencies only and they suffice; the Dockerfile installs
the same way and runs unprivileged; the systemd unit is valid and hardened."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).parent.parent
# slixmpp is a runtime dependency: the plugin SDK (nitro/sdk) and the echo plugin `make run` starts use it
DEV_ONLY = ("pytest", "pytest_asyncio", "ruff", "mypy", "lxml-stubs", "pymysql")


def make_dry_run(target: str, venv: Path) -> list[str]:
    result = subprocess.run(
        ["make", "-n", "-C", str(REPOSITORY), target, f"VENV={venv}", "PYTHON=python3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_installs_the_runtime_only_and_make_test_everything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run = [line for line in make_dry_run("run", venv) if "pip install" in line]
    assert run == [f"{venv}/bin/pip install --quiet --upgrade pip", f"{venv}/bin/pip install --quiet -e ."]
    test = [line for line in make_dry_run("test", venv) if "pip install" in line]
    assert f"{venv}/bin/pip install --quiet -e '.[dev]'" in test


def test_the_runtime_dependencies_suffice(tmp_path: Path) -> None:
    """Every module of Nitro imports, and `nitro user add` / `nitro check` work, with the dev tools
    made unimportable: what `make run` installs is enough."""
    config = tmp_path / "nitro.toml"
    config.write_text("[c2s]\nport = 0\ndirect_tls_port = 0\n[metrics]\nport = 0\n")
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        class NoDevTools(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {DEV_ONLY!r}:
                    raise ImportError(f"{{name}} is a dev tool, not installed by `make run`")
                return None

        sys.meta_path.insert(0, NoDevTools())
        import nitro
        for module in pkgutil.walk_packages(nitro.__path__, "nitro."):
            if module.name != "nitro.__main__":  # that one runs the command line
                importlib.import_module(module.name)
        from nitro.cli import main
        sys.stdin = __import__("io").StringIO("s3cret!!\\n")
        assert main(["--config", {str(config)!r}, "user", "add", "alice", "--password-stdin"]) == 0
        sys.exit(main(["--config", {str(config)!r}, "check"]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "created alice@localhost" in result.stdout
    assert "ok: storage: schema at the newest revision" in result.stdout


def _makefile_runtime_commands() -> list[str]:
    makefile = (REPOSITORY / "Makefile").read_text()
    recipe = re.search(r"^\$\(RUNTIME\): pyproject.toml\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None
    lines = [line.strip() for line in recipe.group(1).splitlines()]
    substitutions = {"$(PYTHON)": "python3", "$(VENV)": ".venv", "$(BIN)": ".venv/bin", " --quiet": ""}
    commands = []
    for line in lines:
        if line.startswith("touch "):
            continue
        for variable, value in substitutions.items():
            line = line.replace(variable, value)
        commands.append(line)
    return commands


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (REPOSITORY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_installs_as_make_run_does_and_runs_unprivileged() -> None:
    instructions = _dockerfile()
    runs = [" ".join(arguments.split()) for kind, arguments in instructions if kind == "RUN"]
    installed = next(run for run in runs if "pip install" in run)
    steps = [step.strip().replace(" --quiet", "") for step in installed.split("&&")]
    assert steps[:3] == _makefile_runtime_commands()
    kinds = [kind for kind, _ in instructions]
    user = instructions[kinds.index("USER")][1]
    assert user not in ("root", "0")
    assert kinds.index("USER") < kinds.index("CMD")
    assert runs[0].startswith("useradd --system --uid 10001 --user-group")
    assert runs[0].endswith(f" {user}")
    command = instructions[kinds.index("CMD")][1]
    config = re.search(r'"--config", "([^"]+)"', command)
    assert config is not None
    assert (REPOSITORY / config.group(1)).exists()  # loaded by test_config's every-shipped-config test


UNIT = REPOSITORY / "config" / "nitro.service"


def test_the_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(UNIT)
    service = unit["Service"]
    assert service["User"] not in ("root", "0")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(service["LimitNOFILE"]) >= 65536
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }
    assert {key: service[key] for key in expected} == expected
    assert service["ReadWritePaths"] == "/opt/nitro/var"
    assert service["CapabilityBoundingSet"] == ""
    assert "--config /opt/nitro/config/nitro.toml serve" in service["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit_and_rates_it_well(tmp_path: Path) -> None:
    """systemd's own verifier, on a copy whose paths exist here; and its exposure rating (0 safe, 10 open)."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    executable = tmp_path / ".venv" / "bin" / "nitro"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    text = UNIT.read_text().replace("/opt/nitro", str(tmp_path))
    text = text.replace("User=nitro", "User=root").replace("Group=nitro", "Group=root")  # no such user here
    copy = tmp_path / "nitro.service"
    copy.write_text(text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (verify.returncode, verify.stderr) == (0, "")
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rating = re.search(
        r"Overall exposure level for nitro.service: ([\d.]+)", security.stdout + security.stderr
    )
    assert rating is not None, security.stdout + security.stderr
    assert float(rating.group(1)) <= 2.5
