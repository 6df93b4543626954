"""The README's two set-up commands are what CI runs: keep them from drifting apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    main_job, test_command = _readme_commands()[:2]
    assert "lite3r" in main_job and "pytest" in test_command
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command.strip() in ci_lines


def test_readme_installs_cpu_torch_first():
    for command in _readme_commands()[:2]:
        assert command.startswith("python3 -m pip install -q torch==2.13.0 &&")
