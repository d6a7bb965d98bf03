"""The README's quick examples run as written.

A code block is quick when the line before its opening fence is ``<!-- quick -->``. The quick
blocks run in order in one temporary folder that holds the repository's ``data``, ``configs``,
``train.py`` and ``sample.py``: ``bash`` blocks with bash (the running Python's bin folder first on
PATH, as after ``source .venv/bin/activate``), ``python`` blocks with ``exec``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

QUICK = re.compile(r"<!-- quick -->\n```(\w+)\n(.*?)\n```", re.S)


def quick_blocks() -> list[tuple[str, str]]:
    """(language, code) of each quick block of README.md, in order."""
    return QUICK.findall((ROOT / "README.md").read_text())


def test_readme_has_quick_shell_and_python_blocks():
    assert [lang for lang, _ in quick_blocks()] == ["bash", "python"]


def test_quick_examples_run_as_written(tmp_path, monkeypatch, capsys):
    for name in ("data", "configs", "train.py", "sample.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    monkeypatch.chdir(tmp_path)
    for lang, code in quick_blocks():
        if lang == "bash":
            proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"{code}\n{proc.stderr[-3000:]}"
        else:
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "samples" / "quick.pdb").is_file() and (tmp_path / "forecast.pdb").is_file()
    assert "ALA99" in capsys.readouterr().out

