"""The README's commands run as written, and the links of the README and docs/ resolve.

A code block is quick when the line before its opening fence is ``<!-- quick -->``. The quick
blocks are the README's own-MD walkthrough (inspect, label, train, sample, evaluate, view, then the
Python API) on the bundled demo MD. They run in order in one temporary folder that holds the
repository's ``data``, ``configs``, ``train.py`` and ``sample.py``, as in a fresh clone: ``bash``
blocks with bash (the running Python's bin folder first on PATH, as after
``source .venv/bin/activate``), ``python`` blocks with ``exec``.

``make demo`` and ``make test`` cannot run inside a test: for every ``make TARGET`` the README
names, the Makefile must have the target, and every repository file its recipe (and the recipes of
its prerequisites) names must exist.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

QUICK = re.compile(r"<!-- quick -->\n```(\w+)\n(.*?)\n```", re.S)
FENCE = re.compile(r"```(\w*)\n(.*?)\n```", re.S)
#: the own-MD path, in the order the README walks it
WALKTHROUGH = ["hemeplm inspect", "hemeplm label", "python train.py", "python sample.py", "hemeplm evaluate",
               "hemeplm view"]


def quick_blocks() -> list[tuple[str, str]]:
    """(language, code) of each quick block of README.md, in order."""
    return QUICK.findall((ROOT / "README.md").read_text())


def test_quick_blocks_walk_the_own_md_path_in_order():
    blocks = quick_blocks()
    assert [lang for lang, _ in blocks] == ["bash"] * 6 + ["python"]
    shell = "\n".join(code for lang, code in blocks if lang == "bash")
    found = [shell.find(command) for command in WALKTHROUGH]
    assert -1 not in found, dict(zip(WALKTHROUGH, found))
    assert found == sorted(found), "the walkthrough's commands are out of order"
    assert "import hemeplm" in blocks[-1][1]


def test_quick_examples_run_as_written(tmp_path, monkeypatch, capsys):
    for name in ("data", "configs", "train.py", "sample.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    monkeypatch.chdir(tmp_path)
    printed = []
    for lang, code in quick_blocks():
        if lang == "bash":
            proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"{code}\n{proc.stderr[-3000:]}"
            printed.append(proc.stdout)
        else:
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    # inspect found the demo's ligand, p-xylene (residue TMP, 8 heavy atoms)
    assert "ligand: 8 atoms" in printed[0] and "TMP" in printed[0], printed[0]
    # label wrote the frames again beside their labels, and training read them
    labelled = tmp_path / "runs" / "labelled" / "traj"
    assert (labelled / "traj.dcd").is_file() and (labelled / "energies_forces.npz").is_file()
    config = (tmp_path / "runs" / "quick" / "config.yaml").read_text()
    assert (tmp_path / "runs" / "quick" / "ckpt.pt").is_file() and "runs/labelled/traj/traj.dcd" in config
    # sample.py wrote the trajectory, its topology and a summary of 9 frames from frame 170
    summary = json.loads((tmp_path / "samples" / "quick.json").read_text())
    assert (tmp_path / "samples" / "quick.pdb").is_file() and summary["num_frames"] == 9 and summary["start"] == 170
    assert all((tmp_path / "samples" / Path(t).name).is_file() for t in summary["trajectories"])
    # evaluate scored the model beside the baselines on the 30 held-out frames
    metrics = json.loads((tmp_path / "eval" / "quick" / "metrics.json").read_text())
    assert {"model", "static", "random_walk"} <= set(metrics)
    assert all(math.isfinite(metrics[who]["torsion_jsd"]) for who in ("model", "static", "random_walk"))
    # view wrote one page holding both panels; the Python API printed the input's residue numbering
    assert (tmp_path / "samples" / "quick.html").stat().st_size > 100_000
    assert (tmp_path / "samples" / "forecast.pdb").is_file()
    assert "ALA98" in capsys.readouterr().out  # the input Trajectory's numbering (mdtraj reads a prmtop from 0)


def make_rules() -> dict[str, tuple[list[str], list[str]]]:
    """The Makefile's rules: target -> (prerequisites, recipe lines)."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current is not None:
            rules[current][1].append(line.strip())
            continue
        rule = re.match(r"^([^\s:=#.][^\s:=]*)\s*:(?!=)\s*(.*)$", line)
        current = None
        if rule:
            current = rule.group(1)
            rules[current] = (rule.group(2).split(), [])
    return rules


def test_make_targets_in_the_readme_exist_with_their_files():
    readme = (ROOT / "README.md").read_text()
    shell = "\n".join(code for lang, code in FENCE.findall(readme) if lang == "bash")
    targets = set(re.findall(r"^make (\w+)", shell, re.M))
    assert {"demo", "test"} <= targets
    rules = make_rules()
    seen, todo, named = set(), sorted(targets), []
    while todo:
        target = todo.pop()
        if target in seen:
            continue
        seen.add(target)
        assert target in rules, f"the README runs `make {target}`, which the Makefile does not define"
        prerequisites, recipe = rules[target]
        todo += [p for p in prerequisites if p in rules]
        named += [("file", p) for p in prerequisites if p not in rules and "$" not in p]
        for line in recipe:
            named += [("file", f) for f in re.findall(r"(?<![\w$./-])((?:configs|tools|data|tests)/[\w./-]+|[\w/]+\.py)\b",
                                                        line)]
            named += [("module", m) for m in re.findall(r"-m\s+([\w.]+)", line) if m not in ("pytest", "pip", "venv")]
    assert ("file", "train.py") in named, named  # make demo trains with train.py
    for kind, name in named:
        if kind == "file":
            assert (ROOT / name).exists(), f"the Makefile names {name}, which does not exist"
        else:
            sys.path.insert(0, str(ROOT))
            try:
                assert importlib.util.find_spec(name) is not None, f"the Makefile runs -m {name}, which does not exist"
            finally:
                sys.path.remove(str(ROOT))


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_links_in_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = FENCE.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_demo_section_of_results_is_delimited():
    text = (ROOT / "docs" / "results.md").read_text()
    assert text.count("<!-- demo:begin -->") == 1 and text.count("<!-- demo:end -->") == 1
    assert text.index("<!-- demo:begin -->") < text.index("<!-- demo:end -->")
