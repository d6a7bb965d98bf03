"""A self-contained HTML viewer of trajectories, side by side (``hemeplm view``, ``sample.py --view``).

Each trajectory is a *panel*: a 3Dmol.js viewer (the release file ships with this
package, so the page needs no network) showing the protein as a cartoon coloured
by a per-residue value and the ligand as sticks. One slider and a play button
drive every panel on a common time axis: the frames of the panel that spans the
longest time; every other panel shows its last frame at or before that time.
Cameras are linked, so turning one turns all.

The page holds heavy atoms only (protein and ligand, as
:func:`~hemeplm.data.load.load_system` keeps them), every panel superposed on the
protein Cα of the first panel's first frame, and coordinates as base64 float32.
Opening ``view.html#frame=N`` shows timeline frame N; the element ``#status``
holds, as JSON, the frame shown, its time and the first atom's coordinates in
every panel as the viewer holds them (what the tests read).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hemeplm.data.load import load_system
from hemeplm.data.numbering import topology_pdb
from hemeplm.errors import HemeplmError, require_file
from hemeplm.evaluate.geometry import superpose
from hemeplm.io import atomic_write_text, check_outputs
from hemeplm.data.parameters import residue_labels
from hemeplm.evaluate.trajectory import rmsf

log = logging.getLogger(__name__)

#: quantities ``values`` may name instead of a file
NAMED_VALUES = ("rmsf", "none")
MAX_FRAMES = 100


@dataclass
class Panel:
    """One trajectory as the viewer shows it.

    Attributes:
        label: the panel's title.
        topology: mdtraj Topology of the A heavy atoms kept (protein and ligand).
        xyz: (F, A, 3) float32 coordinates, Å.
        time_ps: (F,) time of each frame since the panel's first, ps.
        ligand: (L,) indices of ligand atoms.
    """

    label: str
    topology: object
    xyz: np.ndarray
    time_ps: np.ndarray
    ligand: np.ndarray

    @property
    def ca(self) -> np.ndarray:
        """(R,) indices of the protein Cα atoms, one per protein residue."""
        return np.array([a.index for a in self.topology.atoms if a.name == "CA" and a.residue.is_protein])


def load_panel(label: str, topology: str | Path, trajectory: str | Path, ligand: str | None = None,
               start: int = 0, timestep_ps: float | None = None, truncated: str = "error") -> Panel:
    """Read one trajectory from frame ``start`` on (heavy atoms, superposed on its first frame's Cα).

    ``timestep_ps`` overrides the file's frame spacing; ``truncated`` as :func:`~hemeplm.data.load.load_system`.
    """
    system = load_system(topology, [trajectory], ligand=ligand, timestep_ps=timestep_ps, truncated=truncated)
    xyz = system.segments[0]
    if not 0 <= start < len(xyz):
        raise HemeplmError(f"start frame {start} is outside its {len(xyz)} frames", trajectory)
    xyz = xyz[start:]
    return Panel(label, system.topology, xyz, np.arange(len(xyz)) * system.timestep_ps, system.ligand)


def thin(panel: Panel, max_frames: int) -> Panel:
    """The panel with at most ``max_frames`` evenly strided frames (the first always kept)."""
    stride = -(-len(panel.xyz) // max_frames)
    return Panel(panel.label, panel.topology, panel.xyz[::stride], panel.time_ps[::stride], panel.ligand)


def superpose_panels(panels: list[Panel]) -> list[Panel]:
    """Every panel superposed on the Cα of the first panel's first frame (panels with another Cα count
    are left as they are, with a warning)."""
    target = panels[0].xyz[0, panels[0].ca].astype(np.float64)
    out = []
    for p in panels:
        ca = p.ca
        if len(ca) != len(target):
            log.warning("%s: %d Cα atoms, not %d as in %s; not superposed on it",
                        p.label, len(ca), len(target), panels[0].label)
            out.append(p)
            continue
        out.append(Panel(p.label, p.topology, superpose(p.xyz.astype(np.float64), ca, target), p.time_ps, p.ligand))
    return out


def read_values(spec: str, n_residues: int) -> tuple[np.ndarray, str]:
    """Per-residue values from a file: (R,) float64 and a label for the legend.

    ``spec`` is ``FILE.csv`` (one value per line in residue order, or ``residue,value`` rows; a
    header line is skipped), ``FILE.npz`` (its only array, or its ``values`` array) or
    ``FILE.npz:KEY``. A (F, R) array (e.g. ``residue_interaction_kcal_mol`` of
    ``energies_forces.npz``) is averaged over its first axis.
    """
    path_text, _, key = spec.partition(":") if spec.lower().split(":")[0].endswith(".npz") else (spec, "", "")
    path = require_file(path_text)
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path) as z:
                names = list(z.files)
                key = key or ("values" if "values" in names else names[0] if len(names) == 1 else "")
                if key not in names:
                    raise HemeplmError(f"name the array to show as {path}:KEY; it holds {names}", path)
                values = np.asarray(z[key], dtype=np.float64)
            label = key
        else:
            rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
            if rows and not _is_number(rows[0][-1]):
                rows = rows[1:]
            values = np.array([float(r[-1]) for r in rows])
            label = path.stem
    except HemeplmError:
        raise
    except Exception as exc:
        raise HemeplmError(f"cannot read per-residue values: {' '.join(str(exc).split())}", path) from exc
    if values.ndim == 2:
        values = values.mean(0)
    if values.shape != (n_residues,):
        raise HemeplmError(f"has {values.shape} values; the protein has {n_residues} residues", path)
    return values, label


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def residue_values(panels: list[Panel], values: str | None) -> tuple[list[np.ndarray | None], str]:
    """Per panel (R,) values and their legend label: Cα RMSF (``"rmsf"``, each panel its own),
    nothing (``"none"``) or a file (:func:`read_values`, the same for every panel)."""

    values = values or "rmsf"
    if values == "none":
        return [None] * len(panels), ""
    if values == "rmsf":
        return [rmsf(p.xyz[:, p.ca]) for p in panels], "Cα RMSF (Å)"
    vals, label = read_values(values, len(panels[0].ca))
    for p in panels[1:]:
        if len(p.ca) != len(vals):
            raise HemeplmError(f"has {len(vals)} values but panel {p.label} has {len(p.ca)} residues", values)
    return [vals] * len(panels), label


def _pdb_text(panel: Panel) -> str:
    """The panel's first frame as PDB text (with the ligand's bonds as CONECT records)."""
    return topology_pdb(panel.topology, panel.xyz[0], [" "] * panel.topology.n_residues)


def _panel_data(panel: Panel, values: np.ndarray | None) -> dict:
    residue = residue_labels(panel.topology)[0]
    residue[panel.ligand] = -1
    return {
        "label": panel.label,
        "pdb": _pdb_text(panel),
        "n_atoms": panel.topology.n_atoms,
        "time_ps": [round(float(t), 4) for t in panel.time_ps],
        "coords": base64.b64encode(np.ascontiguousarray(panel.xyz, dtype="<f4").tobytes()).decode("ascii"),
        "residue": residue.tolist(),
        "values": None if values is None else [round(float(v), 4) for v in values],
    }


def render_html(panels: list[Panel], values: list[np.ndarray | None], value_label: str,
                title: str = "HemePLM-Diffuse trajectories") -> str:
    """The viewer page for ``panels`` (already superposed and thinned) as one HTML string."""
    finite = [v for v in values if v is not None]
    lo = float(min(v.min() for v in finite)) if finite else 0.0
    hi = float(max(v.max() for v in finite)) if finite else 1.0
    data = {"title": title, "value_label": value_label, "value_range": [lo, hi if hi > lo else lo + 1.0],
            "panels": [_panel_data(p, v) for p, v in zip(panels, values)]}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    assets = resources.files("hemeplm") / "assets"
    library = (assets / "3Dmol-min.js").read_text(encoding="utf-8")
    page = (assets / "viewer.html").read_text(encoding="utf-8")
    return (page.replace("@@TITLE@@", _escape(title))
            .replace("@@DATA@@", payload)
            .replace("@@3DMOL@@", library))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_view(out: str | Path, panels: list[Panel], values: str | None = "rmsf", max_frames: int = MAX_FRAMES,
               title: str = "HemePLM-Diffuse trajectories", force: bool = False) -> Path:
    """Write the viewer page of ``panels`` to ``out`` (see the module docstring), atomically.

    Args:
        panels: trajectories to show side by side; the first is the superposition target.
        values: ``"rmsf"`` (default), ``"none"`` or a per-residue file (:func:`read_values`).
        max_frames: frames kept per panel (evenly strided) to keep the page small.
        force: overwrite an existing ``out`` (else a :class:`HemeplmError`).
    """
    if not panels:
        raise HemeplmError("give at least one trajectory to view")
    if max_frames < 1:
        raise HemeplmError(f"max_frames must be at least 1, got {max_frames}")
    out = Path(out)
    check_outputs([out], force, out)
    panels = superpose_panels([thin(p, max_frames) for p in panels])
    vals, label = residue_values(panels, values)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_html(panels, vals, label, title))
    log.info("%s: %d panel(s), %.1f MB", out, len(panels), out.stat().st_size / 1e6)
    return out


def view_files(topology: str | Path, trajectories: list[str | Path], out: str | Path,
               reference: list[str | Path] = (), reference_topology: str | Path | None = None,
               ligand: str | None = None, values: str | None = "rmsf", max_frames: int = MAX_FRAMES,
               timestep_ps: float | None = None, reference_start: int = 0, force: bool = False,
               truncated: str = "error") -> Path:
    """``hemeplm view``: one panel per trajectory, then one per reference trajectory
    (read with ``reference_topology``, default ``topology``, from frame ``reference_start``).
    An existing ``out`` is refused before anything is read, unless ``force``."""
    check_outputs([Path(out)], force, out)
    panels = [load_panel(Path(t).name, topology, t, ligand, timestep_ps=timestep_ps, truncated=truncated)
              for t in trajectories]
    panels += [load_panel(f"reference {Path(t).name}", reference_topology or topology, t, ligand,
                          start=reference_start, timestep_ps=timestep_ps, truncated=truncated) for t in reference]
    return write_view(out, panels, values, max_frames, force=force)


def view_sample(summary: dict, out: str | Path, max_frames: int = MAX_FRAMES, force: bool = False,
                truncated: str = "error", timestep_ps: float | None = None) -> Path:
    """``sample.py --view``: the generated trajectories of a :func:`~hemeplm.generate.sampler.run_task` summary
    beside the given MD (its ``frames`` file from the first frame used, when it holds more than one frame), read
    with the ``truncated`` and ``timestep_ps`` the sampling read it with."""
    check_outputs([Path(out)], force, out)
    panels = [load_panel(Path(t).name, summary["topology_pdb"], t) for t in summary["trajectories"]]
    first = (summary.get("given_frames") or [summary.get("start") or 0])[0]
    given = load_panel(f"given {Path(summary['frames']).name}", summary["topology"], summary["frames"], start=first,
                       timestep_ps=timestep_ps, truncated=truncated)
    if len(given.xyz) > 1:
        panels.append(given)
    return write_view(out, panels, "rmsf", max_frames, title=f"{summary['task']}: {Path(out).stem}", force=force)
