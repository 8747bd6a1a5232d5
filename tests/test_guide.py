"""docs/adding_a_rule.md is checked: every ``$ `` command of its ```console blocks
runs, in order, in a scratch copy of the repository (with this venv's ``fundwatch``
on PATH), and exits 0; the output lines the guide shows under a command appear in
what it printed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "adding_a_rule.md"
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
# Not copied into the scratch repository: environments, caches, run outputs.
SKIP_TOP = {".venv", ".git", ".pytest_cache", ".ruff_cache", "demo-out", "fundwatch-data"}


def guide_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, output lines shown under it) for each ``$ `` line of the console
    blocks; a here-document's lines belong to its command, ``...`` output lines are
    elisions."""
    out: list[tuple[str, list[str]]] = []
    fence: str | None = None
    lines = iter(text.splitlines())
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence != "console":
            continue
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command += "\n" + next(lines)
            heredoc = HEREDOC.search(command)
            if heredoc:
                for body in lines:
                    command += "\n" + body
                    if body.strip() == heredoc.group(2):
                        break
            out.append((command, []))
        elif out and stripped and stripped != "...":
            out[-1][1].append(stripped)
    return out


def test_the_guide_walks_through_every_step():
    commands = " ".join(c for c, _ in guide_commands(GUIDE.read_text(encoding="utf-8")))
    for step in ("fundwatch rules new", "fundwatch rules test", "fundwatch rules list",
                 "fundwatch rules explain", "fundwatch replay", "FUNDWATCH_CONFIG=",
                 "--dir", "<<'EOF'"):
        assert step in commands, f"the guide's console blocks should show {step!r}"


def test_heredocs_and_output_lines_are_told_apart():
    text = "```console\n$ cat > a.toml <<'EOF'\n[x]\nEOF\n$ echo hi\nhi\n...\n```\n"
    assert guide_commands(text) == [("cat > a.toml <<'EOF'\n[x]\nEOF", []),
                                    ("echo hi", ["hi"])]


def _scratch_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "main"

    def ignore(directory, names):
        top = Path(directory) == ROOT
        return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
                or (top and n in SKIP_TOP)}

    shutil.copytree(ROOT, repo, ignore=ignore)
    contract = ROOT.parent / "shared" / "contract"
    if contract.is_dir():  # the contract folder stands beside the repository
        shutil.copytree(contract, tmp_path / "shared" / "contract")
    return repo


def test_every_command_of_the_guide_runs(tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "fundwatch").exists():
        pytest.skip("run with the venv's python (its fundwatch script is needed)")
    repo = _scratch_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDWATCH_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(repo),
               PYTHONDONTWRITEBYTECODE="1")
    commands = guide_commands(GUIDE.read_text(encoding="utf-8"))
    assert commands
    for number, (command, shown) in enumerate(commands, 1):
        done = subprocess.run(command, shell=True, executable="/bin/bash", cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
        printed = done.stdout + done.stderr
        assert done.returncode == 0, (
            f"guide command {number} exited {done.returncode}:\n$ {command}\n{printed[-3000:]}")
        lines = {line.strip() for line in printed.splitlines()}
        for line in shown:
            assert line in lines, (f"guide command {number} should print {line!r}:\n"
                                   f"$ {command}\n{printed[-3000:]}")
    # The guide wrote into the scratch copy, not into the repository.
    assert (repo / "rules" / "builtin" / "visit_count.py").exists()
    assert not (ROOT / "rules" / "builtin" / "visit_count.py").exists()
