"""The plan of the house, as import-linter contracts (pyproject.toml), holds; and each
contract really catches what it forbids: a violation seeded into a copy of the tree breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "supervisor", "catalyst_config")
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]

# contract id -> (file, the import that breaks it)
SEEDED = {
    "actors-not-supervisor": ("actors/fetcher.py", "import supervisor.handle"),
    "seen-store-owner": ("actors/alert.py", "import actors.seen_store"),
    "supervisor-entry-points": ("supervisor/supervisor.py", "import actors.feeds"),
    "config-alone": ("catalyst_config/schema.py", "import actors.base"),
    "helpers-independent": ("actors/sinks/files.py", "import actors.charts"),
    "shared-helpers-below": ("actors/storage/sqlite.py", "import actors.sinks"),
    "protocol-alone": ("actors/protocol.py", "import actors.base"),
}


def lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([*LINT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_tree_keeps_every_architecture_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_contract_has_a_seeded_violation():
    text = (ROOT / "pyproject.toml").read_text()
    ids = {line.split('"')[1] for line in text.splitlines() if line.startswith("id = ")}
    assert ids == set(SEEDED)


@pytest.mark.parametrize("contract", sorted(SEEDED))
def test_a_seeded_violation_breaks_its_contract(tmp_path, contract):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path, line = SEEDED[contract]
    kept = lint(tmp_path, "--contract", contract)
    assert kept.returncode == 0, kept.stdout + kept.stderr  # the copy is clean
    with open(tmp_path / path, "a") as f:
        f.write(f"\n{line}  # seeded violation\n")
    broken = lint(tmp_path, "--contract", contract)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout, broken.stdout + broken.stderr
