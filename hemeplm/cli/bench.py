"""``hemeplm bench``: time and peak memory of training and sampling against system size.

For each system (small to large) a randomly initialised model is built from a
config (timing does not depend on the weights) and two things are measured,
each in a fresh child process so that its peak memory is its own:

* ``train_step``: one optimiser step of :class:`~hemeplm.train.loop.Objective`
  on a batch of ``optim.batch_size`` windows of ``data.window`` frames, with
  the energy and force losses on (synthetic targets: the force loss's second
  derivative through the encoder is part of a real step's cost);
* ``sample``: a forecast of ``--frames`` frames (100) from one start frame
  with :class:`~hemeplm.generate.sampler.Generator`, with the config's sampler and
  steps per window (``diffusion.sampler``, ``diffusion.sample_steps``: what
  ``sample.py`` and the demo's quality tables use, with the config's restarts)
  unless ``--sampler`` or ``--steps`` say otherwise (DDIM time is linear in
  the denoiser calls: the steps plus ``diffusion.restarts`` ×
  ``diffusion.restart_steps``).

Peak memory: on the CPU the child's resident-set high-water mark (VmHWM, reset
with ``/proc/self/clear_refs`` once the system and model are loaded, so it
covers the measured work plus what was already resident); on CUDA
``torch.cuda.max_memory_allocated``. A CPU child's address space is capped at
``CHILD_MEMORY_GIB``: a measurement that does not fit fails with an error in
its row instead of waking the OOM killer. The log–log slopes of sampling time
and peak memory against atom count are fitted over all systems measured.

Systems (heavy atoms are modelled; kept solvent is selected as ligand, so
its water oxygens and ions are pooled into tokens of up to
``data.ligand_group`` atoms like the hemes, see
:func:`hemeplm.data.tokens.ligand_groups`):

* ``t4l``: T4 lysozyme L99A + p-xylene (Amber prmtop, 2,621 atoms);
* ``19hc``, ``19hc_water``: nine-haem cytochrome c (PDB 19HC) with hydrogens
  added (PDBFixer + the CHARMM36 heme hydrogen definitions of
  :mod:`hemeplm.forcefield.simulate`), its 18 hemes as the ligand, without and with its
  885 crystal waters (the prepared PDBs are cached);
* ``adk``, ``adk_water``: adenylate kinase in TIP4P water (GROMACS, 47,681
  atoms, from ``../shared/data/adk_water`` when present): solvent dropped,
  or kept.

``--vs-md`` also runs OpenMM on the T4L system for a fixed wall time (OBC2
implicit solvent, 4 fs steps with hydrogen mass repartitioning, as
``hemeplm simulate`` runs it) and compares simulated nanoseconds per
wall-clock hour with the model's forecast (frames × lag × 1 ps, the demo MD's
frame interval). With ``--ckpt`` (a checkpoint trained on T4L, e.g. the demo's)
the comparison is made with that model instead, at every lag it was trained at
(:func:`trained_rates`): its forecast of its held-out MD
(:mod:`hemeplm.generate.heldout`) with its default sampler, raw and projected,
timed and scored (validity and torsion JSD of the same samples) in the same JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hemeplm.cli.options import HelpFormatter, count, positive
from hemeplm.errors import HemeplmError
from hemeplm.forcefield import simulate as sim
from hemeplm.data.load import load_topology, select_ligand
from hemeplm.config import PRECISIONS, load_config
from hemeplm.data.dataset import featurize
from hemeplm.device import resolve_device
from hemeplm.generate.heldout import held_out, held_out_frames
from hemeplm.evaluate.run import evaluate_trajectories
from hemeplm.diffusion import GaussianDiffusion
from hemeplm.models.surrogate import HemePLM, system_static
from hemeplm.generate.sampler import Sampler, load_frames, run_task, sampler_settings
from hemeplm.tasks import task_mask
from hemeplm.train.loop import Objective
from hemeplm.plots import _save, plt

ROOT = Path(__file__).resolve().parents[2]
T4L = ROOT / "data" / "t4l_l99a_xylene"
HEME_PDB = ROOT / "tests" / "data" / "19hc.pdb.gz"
ADK = ROOT.parent / "shared" / "data" / "adk_water"
GIB = 1024 ** 3
#: the demo MD's frame interval (``hemeplm simulate`` defaults: 250 steps of 4 fs)
MD_FRAME_PS = 1.0
#: address-space cap of a measuring child process on the CPU (GiB): beyond it a measurement fails with an error
CHILD_MEMORY_GIB = 18
#: the override the benchmark starts from: local spatial attention (linear in tokens) at every size
LOCAL = "denoiser.spatial=local"


@dataclass
class BenchSystem:
    """One system to measure.

    Attributes:
        name: short label; topology, trajectories: files as ``data.topology`` / ``data.trajectories``;
        ligand: ``data.ligand`` selection (solvent included when kept); solvent: "none", "dropped" or "kept".
    """

    name: str
    topology: str
    trajectories: list[str]
    ligand: str
    solvent: str
    description: str


def prepare_heme_protein(source: str | Path, out: str | Path, keep_water: bool) -> Path:
    """A heme protein PDB with hydrogens added, cached at ``out``.

    PDBFixer completes the protein; heme groups get the CHARMM36 ``HEME`` template's bonds
    and hydrogen definitions (:mod:`hemeplm.forcefield.simulate`); every other heterogen is removed,
    crystal waters too unless ``keep_water``. Hydrogens are placed from the residues'
    hydrogen definitions without a force field: CHARMM36's b-type ``HEME`` template cannot
    match a c-type heme bonded to two cysteines (as in 19HC), which is where
    :func:`hemeplm.forcefield.simulate.prepare_pdb` stops. The thioether-linked vinyl carbons so get
    the b-type heme's vinyl hydrogens (one hydrogen short per link); the count is for
    timing, not for simulation.
    """
    import gzip
    import io

    from openmm import app
    from pdbfixer import PDBFixer

    out = Path(out)
    if out.exists():
        return out
    text = gzip.open(source, "rt").read() if str(source).endswith(".gz") else Path(source).read_text()
    fixer = PDBFixer(pdbfile=io.StringIO(text))
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    modeller = app.Modeller(fixer.topology, fixer.positions)
    keep = set(sim.PROTEIN_RESIDUES) | set(sim.HEME_PDB_NAMES) | ({"HOH"} if keep_water else set())
    modeller.delete([r for r in modeller.topology.residues() if r.name not in keep])
    fixer.topology, fixer.positions = modeller.topology, modeller.positions
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    modeller = app.Modeller(fixer.topology, fixer.positions)
    sim.prepare_heme(modeller)
    modeller.loadHydrogenDefinitions(io.BytesIO(sim.heme_hydrogen_definitions()))
    modeller.addHydrogens(pH=7.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    app.PDBFile.writeFile(modeller.topology, modeller.positions, buf, keepIds=True)
    sim.atomic_write_bytes(out, buf.getvalue().encode())
    return out


SYSTEM_NAMES = ("t4l", "19hc", "19hc_water", "adk", "adk_water")


def default_systems(cache: Path, names: list[str] | None = None, adk: Path = ADK) -> list[BenchSystem]:
    """The benchmark's systems (all, or ``names``), smallest first; the AdK pair only when ``adk`` has its files.

    The 19HC PDBs with hydrogens are prepared into ``cache`` on first use.
    """
    names = list(SYSTEM_NAMES) if names is None else names
    unknown = sorted(set(names) - set(SYSTEM_NAMES))
    if unknown:
        raise HemeplmError(f"unknown system(s) {unknown}; choose from {list(SYSTEM_NAMES)}")
    systems = []
    if "t4l" in names:
        systems.append(BenchSystem("t4l", str(T4L / "complex.prmtop"), [str(T4L / "complex.pdb")], "resname TMP",
                                   "none", "T4 lysozyme L99A + p-xylene, Amber, implicit solvent"))
    for name, water in (("19hc", False), ("19hc_water", True)):
        if name in names:
            pdb = prepare_heme_protein(HEME_PDB, cache / f"{name}_h.pdb", water)
            systems.append(BenchSystem(
                name, str(pdb), [], "resname HEM or (water and element O)" if water else "resname HEM",
                "kept" if water else "none",
                "nine-haem cytochrome c (PDB 19HC), hydrogens added, 18 hemes"
                + (" + 885 crystal waters" if water else "")))
    gro, xtc = adk / "adk_oplsaa.gro", adk / "adk_oplsaa.xtc"
    if gro.exists() and xtc.exists():
        if "adk" in names:
            systems.append(BenchSystem("adk", str(gro), [str(xtc)], "none", "dropped",
                                       "adenylate kinase (OPLS-AA, TIP4P), solvent dropped"))
        if "adk_water" in names:
            systems.append(BenchSystem("adk_water", str(gro), [str(xtc)], "(water and name O) or resname 'NA+'",
                                       "kept", "adenylate kinase in water, water oxygens and ions pooled as ligand"))
    return systems


def system_atoms(system: BenchSystem) -> tuple[int, int]:
    """(atoms in the input topology, atoms of the modelled molecules with their hydrogens)."""

    top = load_topology(system.topology)
    residues = {top.atom(int(i)).residue.index for i in select_ligand(top, system.ligand, system.topology)}
    kept = sum(1 for a in top.atoms if a.residue.is_protein or a.residue.index in residues)
    return top.n_atoms, kept


# ----------------------------------------------------------------------------- one measurement (child process)

def _vm(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in GiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024 / GIB


def _reset_peak(device) -> float:
    """Start a new peak-memory interval; returns what is resident now (GiB)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / GIB
    Path("/proc/self/clear_refs").write_text("5")
    return _vm("VmRSS")


def _peak(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / GIB
    return _vm("VmHWM")


def measure(spec: dict) -> dict:
    """Build one system's model and time one training step or one forecast (run in a child process).

    ``spec``: ``system`` (BenchSystem fields), ``what`` ("train" or "sample"), ``config``,
    ``overrides``, ``device``, ``dtype``, ``compile`` (the denoiser compiled with ``torch.compile``; a first,
    untimed forecast window or training step pays for the compiling), ``frames``, ``sampler``, ``steps``,
    ``cache``, ``threads`` (None: torch's default).
    """
    import torch

    if spec["device"] == "cpu":  # fail cleanly rather than wake the OOM killer on a shared machine
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_GIB * GIB, CHILD_MEMORY_GIB * GIB))
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    system = BenchSystem(**spec["system"])
    cfg = load_config(spec["config"], spec["overrides"])
    cfg.data.topology, cfg.data.trajectories, cfg.data.ligand = system.topology, system.trajectories, system.ligand
    cfg.data.cache_dir, cfg.precision = spec["cache"], spec["dtype"]
    device = resolve_device(spec["device"])
    torch.manual_seed(0)
    feats = featurize(cfg.data)
    model = HemePLM(cfg, system_static(feats, cfg.denoiser.pocket_radius, cfg.denoiser.domain_size)).to(device)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion).to(device)
    frames = torch.as_tensor(feats["segments"][0], device=device)
    result = {"n_modelled": int(feats["n_atoms"]), "n_tokens": int(model.tokens.kind.numel()),
              "n_ligand_tokens": int(model.token_is_ligand.sum()), "n_pocket_tokens": int(model.pocket.numel()),
              "parameters": sum(p.numel() for p in model.parameters())}
    gen = torch.Generator().manual_seed(0)
    if spec["what"] == "sample":
        sampler = Sampler(model.eval(), diffusion, cfg, steps=spec["steps"], sampler=spec["sampler"],
                          precision=spec["dtype"], compile=spec["compile"])
        if spec["compile"]:
            sampler.forecast(frames[0], 2, 1, gen)
        before = _reset_peak(device)
        t0 = time.perf_counter()
        out = sampler.forecast(frames[0], spec["frames"], 1, gen)
        elapsed = time.perf_counter() - t0
        result.update(sample_s=elapsed, sample_peak_gib=_peak(device), sample_resident_before_gib=before,
                      sample_finite=bool(torch.isfinite(out).all()), frames=int(out.shape[1]))
        return result
    b, t = cfg.optim.batch_size, cfg.data.window
    coords = frames[torch.arange(t) % len(frames)][None].repeat(b, 1, 1, 1)
    coords = coords + 0.1 * torch.randn(coords.shape, generator=gen).to(device)
    k = cfg.energy.frames_per_step
    labelled = {"coords": coords[:, 0][torch.arange(k) % b], "energy": torch.zeros(k, device=device),
                "forces": torch.zeros_like(coords[0, :k]),
                "interaction": torch.zeros(k, model.interaction_mean.numel(), device=device),
                "has_interaction": torch.ones(k, dtype=torch.bool, device=device)}
    # synthetic targets: the energy, force and interaction losses run as in a real step
    model.has_energy_stats.fill_(True)
    model.has_interaction_stats.fill_(True)
    mask = task_mask("forecast", t, model.token_is_ligand).expand(b, -1, -1)
    objective = Objective.from_config(model.train(), diffusion, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    if spec["compile"]:
        model.denoiser.compile()
    before = _reset_peak(device)
    times = []
    for _ in range(2):  # the first step also allocates the optimiser state; the second is timed
        t0 = time.perf_counter()
        loss = objective(coords, mask, torch.randint(0, diffusion.timesteps, (b,), generator=gen).to(device), gen,
                         labelled if cfg.energy.enabled else None)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    result.update(train_step_s=times[-1], train_peak_gib=_peak(device), train_resident_before_gib=before,
                  train_batch=b, train_loss_finite=bool(torch.isfinite(loss)))
    return result


# ----------------------------------------------------------------------------- driver

def _child(spec: dict) -> dict:
    """Run :func:`measure` in a fresh Python process; a failure is returned as ``error``."""
    proc = subprocess.run([sys.executable, "-m", "hemeplm.cli.bench", json.dumps(spec)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"{spec['what']} failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def loglog_slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two distinct x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(np.unique(x)) < 2:
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def md_rate(seconds: float, threads: int | None = None) -> dict:
    """OpenMM on the T4L system for ``seconds`` of wall time: simulated ns per wall-clock hour."""

    cfg = sim.SimulateConfig(threads=threads, platform="CPU")
    parts = sim.prepare_amber(T4L / "complex.prmtop", T4L / "complex-minimized.crd", cfg)
    with tempfile.TemporaryDirectory() as tmp:
        run = sim.MDRun(*parts, cfg=cfg, out=tmp, inputs={"bench": "t4l"})  # minimised, velocities set
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            run.sim.step(cfg.report_every)
            steps += cfg.report_every
        elapsed = time.perf_counter() - t0
    ns = steps * cfg.timestep_fs * 1e-6
    return {"system": "t4l", "wall_s": elapsed, "steps": steps, "timestep_fs": cfg.timestep_fs,
            "solvent": cfg.solvent, "hydrogen_mass_amu": cfg.hydrogen_mass_amu, "cutoff_nm": cfg.cutoff_nm,
            "simulated_ns": ns, "ns_per_hour": ns / elapsed * 3600}


#: the held-out metrics :func:`trained_rates` keeps beside each timing
RATE_METRICS = ("torsion_jsd", "rmsf_pearson", "bond_ok_fraction", "bond_ok_fraction_peptide", "clashes_per_frame",
                "omega_outlier_fraction", "ramachandran_outlier_fraction", "physical_filter_pass_fraction")


def trained_rates(ckpt: str | Path, out: Path, md_ns_per_hour: float, device: str = "cpu",
                  threads: int | None = None, steps: int | None = None, log=print) -> list[dict]:
    """Simulated ns per wall hour of a trained checkpoint, and the held-out fidelity of the same samples.

    At every lag the checkpoint was trained at, one forecast from the first frame of its held-out MD
    (:func:`~hemeplm.generate.heldout.held_out_frames`) over the held-out span, with the checkpoint's
    default sampler (``steps`` DDIM steps instead when given), raw (``project_steps`` 0) and projected (as
    ``sample.py`` samples); each is timed
    (sampling only, no confidence score) and scored against the held-out MD
    (:func:`~hemeplm.evaluate.run.evaluate_trajectories`, frame 0 left out).

    Returns:
        one row per lag and kind: ``lag_ps``, ``kind`` ("raw" or "projected"), ``frames``, ``wall_s``,
        ``simulated_ns``, ``ns_per_hour``, ``speedup`` (over ``md_ns_per_hour``), ``denoiser_calls`` and the
        :data:`RATE_METRICS`.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    rows = []
    loaded = Sampler.from_checkpoint(ckpt, device=device, steps=steps)
    segs, train_dt = load_frames(loaded, loaded.cfg.data.topology, [loaded.cfg.data.trajectories[0]])
    for lag_ps in loaded.lags_ps:
        gen = dataclasses.replace(loaded, lag_ps=lag_ps)
        md, dt, _ = held_out_frames(gen, segs[0], train_dt)
        topology, reference, _, n_held = held_out(gen, out / "heldout", md, dt)
        n_frames = (n_held - 1) // gen.lag + 1
        for kind, g in (("raw", dataclasses.replace(gen, project_steps=0)), ("projected", gen)):
            log(f"bench: {ckpt} at {lag_ps:g} ps, {kind}: {n_frames} frames ...")
            made = run_task(g, "forecast", topology, reference, out / f"lag{lag_ps:g}ps_{kind}.xtc", start=0,
                            num_frames=n_frames, confidence=False, force=True)
            metrics = evaluate_trajectories(topology, [reference], made["trajectories"],
                                            out / f"lag{lag_ps:g}ps_{kind}", task="forecast", force=True,
                                            ligand_file=gen.cfg.data.ligand_file)
            simulated = (n_frames - 1) * lag_ps * 1e-3
            rate = simulated / made["wall_seconds"] * 3600
            rows.append({"lag_ps": lag_ps, "kind": kind, "frames": n_frames, "wall_s": made["wall_seconds"],
                         "simulated_ns": simulated, "ns_per_hour": rate, "speedup": rate / md_ns_per_hour,
                         "denoiser_calls": g.denoiser_steps,
                         **{k: metrics["model"][k] for k in RATE_METRICS}})
    return rows


def plot_scaling(systems: list[dict], slope_time: float | None, slope_memory: float | None, path: Path) -> Path:
    """Log–log plot of sampling (and training-step) time and peak memory against atom count."""

    ok = [s for s in systems if "sample_s" in s]
    x = np.array([s["n_atoms"] for s in ok], float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, train_key, slope, unit in ((axes[0], "sample_s", "train_step_s", slope_time, "s"),
                                            (axes[1], "sample_peak_gib", "train_peak_gib", slope_memory, "GiB")):
        y = np.array([s[key] for s in ok], float)
        ax.loglog(x, y, "o", label="sampling")
        if slope is not None:
            fit = np.polyfit(np.log(x), np.log(y), 1)
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.loglog(grid, np.exp(np.polyval(fit, np.log(grid))), "-", label=f"fit, slope {slope:.2f}")
        tr = [(s["n_atoms"], s[train_key]) for s in ok if train_key in s]
        if tr:
            ax.loglog(*zip(*tr), "s", label="training step")
        for s in ok:
            ax.annotate(s["name"], (s["n_atoms"], s[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels (2×10^3, 3×10^3, ...) overlap
        ax.set_xlabel("atoms (with hydrogens)")
        ax.set_ylabel(f"{'time' if unit == 's' else 'peak memory'} ({unit})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def run_bench(out: str | Path, config: str | None = None, overrides: list[str] = (), device: str = "cpu",
              dtype: str = "float32", frames: int = 100, sampler: str | None = None, steps: int | None = None,
              systems: list[str] | None = None, vs_md: bool = False, md_seconds: float = 60.0, train: bool = True,
              threads: int | None = None, ckpts: list[str] = (), compile: bool = False, log=print) -> dict:
    """Measure every system; write ``out/bench.json`` and ``out/bench.png``; return the JSON.

    The config is ``config`` with ``denoiser.spatial=local`` and then ``overrides`` applied
    (local attention everywhere, so that one model design is compared across sizes).
    ``sampler`` and ``steps`` None mean the config's ``diffusion.sampler`` and ``diffusion.sample_steps``.
    With ``vs_md`` and trained ``ckpts`` the JSON's ``trained`` holds each one's :func:`trained_rates` (``steps``
    given: at that many DDIM steps).
    """
    import torch

    out = Path(out)
    cache = (out / "cache").resolve()
    overrides = [LOCAL, *overrides]
    resolve_device(device)  # fails here, once, when the GPU or its neighbour search is unusable
    cfg = load_config(config, overrides)
    sampler, steps = sampler_settings(cfg, sampler, steps, config)
    load_start = os.getloadavg()
    chosen = default_systems(cache, systems)
    results = []
    for system in chosen:
        n_input, n_atoms = system_atoms(system)
        row = {"name": system.name, "description": system.description, "solvent": system.solvent,
               "n_atoms": n_atoms, "n_atoms_input": n_input}
        spec = {"system": asdict(system), "config": config, "overrides": list(overrides), "device": device,
                "dtype": dtype, "compile": compile, "frames": frames, "sampler": sampler, "steps": steps,
                "cache": str(cache), "threads": threads}
        for what in ("sample", "train") if train else ("sample",):
            log(f"bench {system.name} ({n_atoms} atoms): {what} ...")
            row.update(_child({**spec, "what": what}))
        log("  " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        results.append(row)
    ok = [r for r in results if "sample_s" in r]
    slope_time = loglog_slope([r["n_atoms"] for r in ok], [r["sample_s"] for r in ok])
    slope_memory = loglog_slope([r["n_atoms"] for r in ok], [r["sample_peak_gib"] for r in ok])
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": threads or torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "settings": {"config": config, "overrides": list(overrides), "device": device, "dtype": dtype,
                     "compile": compile,
                     "forecast_frames": frames, "sampler": sampler, "steps": steps,
                     "denoiser_steps": GaussianDiffusion.from_config(cfg.diffusion).calls(
                         sampler, steps, **cfg.diffusion.restart_settings),
                     "window": cfg.data.window, "lag": cfg.data.lag,
                     "batch_size": cfg.optim.batch_size, "spatial": cfg.denoiser.spatial,
                     "local_neighbors": cfg.denoiser.local_neighbors},
        "systems": results,
        "slope_time": slope_time,
        "slope_memory": slope_memory,
        "slope_time_vs_tokens": loglog_slope([r["n_tokens"] for r in ok], [r["sample_s"] for r in ok]),
        "slope_time_vs_modelled_atoms": loglog_slope([r["n_modelled"] for r in ok], [r["sample_s"] for r in ok]),
    }
    if vs_md:
        t4l = next((r for r in ok if r["name"] == "t4l"), None)
        if t4l is None:
            raise HemeplmError("--vs-md compares on the t4l system; include it")
        log(f"bench: OpenMM on t4l for {md_seconds:g} s ...")
        md = md_rate(md_seconds, threads)
        simulated = (t4l["frames"] - 1) * cfg.data.lag * MD_FRAME_PS * 1e-3
        model_rate = simulated / t4l["sample_s"] * 3600
        report.update(md_ns_per_hour=md["ns_per_hour"], model_ns_per_hour=model_rate,
                      speedup=model_rate / md["ns_per_hour"],
                      vs_md={"md": md, "model": {"system": "t4l", "frames": t4l["frames"], "lag": cfg.data.lag,
                                                 "frame_ps": MD_FRAME_PS, "simulated_ns": simulated,
                                                 "wall_s": t4l["sample_s"]}})
        report["trained"] = [{"ckpt": str(c), "rates": trained_rates(c, out / "trained" / Path(c).parent.name,
                                                                     md["ns_per_hour"], device, threads, steps, log)}
                             for c in ckpts]
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    if ok:
        plot_scaling(results, slope_time, slope_memory, out / "bench.png")
    return report


def run(args) -> None:
    report = run_bench(args.out, args.config, args.overrides, device=args.device, dtype=args.dtype,
                       frames=args.frames, sampler=args.sampler, steps=args.steps, systems=args.systems,
                       vs_md=args.vs_md, md_seconds=args.md_seconds, train=not args.no_train, threads=args.threads,
                       ckpts=args.ckpt, compile=args.compile)
    nan = float("nan")
    for r in report["systems"]:
        print(f"{r['name']:>11}: {r['n_atoms']:>6} atoms, {r.get('n_tokens', '?')} tokens: "
              f"sample {r.get('sample_s', nan):.1f} s / {r.get('sample_peak_gib', nan):.2f} GiB, "
              f"train step {r.get('train_step_s', nan):.2f} s / {r.get('train_peak_gib', nan):.2f} GiB"
              + (f"  ERROR {r['error']}" if "error" in r else ""))
    print(f"slope (log-log, sampling vs atoms): time {report['slope_time']}, memory {report['slope_memory']}")
    if "speedup" in report:
        print(f"OpenMM {report['md_ns_per_hour']:.3g} ns/h, model {report['model_ns_per_hour']:.3g} ns/h, "
              f"speedup {report['speedup']:.3g}x")
    for trained in report.get("trained", []):
        for r in trained["rates"]:
            print(f"{trained['ckpt']} at {r['lag_ps']:g} ps, {r['kind']}: {r['ns_per_hour']:.3g} ns/h "
                  f"({r['speedup']:.3g}x OpenMM), held-out torsion JSD {r['torsion_jsd']:.3f}, bonds "
                  f"{r['bond_ok_fraction']:.3f}, clashes/frame {r['clashes_per_frame']:.3g}, filter "
                  f"{r['physical_filter_pass_fraction']:.2f}")
    print(f"{Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.png'}")


def add_parser(sub) -> None:
    """Add ``hemeplm bench`` to the ``hemeplm`` subparsers."""
    b = sub.add_parser("bench", help="time and peak memory of training and sampling vs system size",
                       formatter_class=HelpFormatter)
    b.add_argument("--out", required=True, help="output folder (bench.json, bench.png, cache/)")
    b.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="model config (YAML)")
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    b.add_argument("--dtype", choices=PRECISIONS, default="float32", help="bfloat16: autocast")
    b.add_argument("--compile", action="store_true",
                   help="compile the denoiser with torch.compile (a first, untimed window or step compiles it)")
    b.add_argument("--frames", type=count(2), default=100, help="frames of the forecast that is timed")
    b.add_argument("--sampler", default=None,
                   help="ddim or ancestral (default: the config's diffusion.sampler, as sample.py and the demo use)")
    b.add_argument("--steps", type=count(1), default=None,
                   help="DDIM steps per window (default: the config's diffusion.sample_steps; sampling time is "
                        "linear in it; ancestral sampling takes every diffusion step)")
    b.add_argument("--threads", type=count(1), default=None, help="CPU threads for the model and OpenMM (default: all)")
    b.add_argument("--systems", nargs="+", default=None, choices=SYSTEM_NAMES, help="default: all (AdK if present)")
    b.add_argument("--no-train", action="store_true", help="time sampling only")
    b.add_argument("--vs-md", action="store_true", help="also run OpenMM on t4l and compare ns per hour")
    b.add_argument("--md-seconds", type=positive, default=60.0, help="wall time of the OpenMM run")
    b.add_argument("--ckpt", action="append", default=[],
                   help="with --vs-md: a checkpoint trained on T4L (runs/demo/ckpt.pt; repeat for more), timed and "
                        "scored on its held-out MD at every lag it was trained at, raw and projected")
    b.add_argument("overrides", nargs="*", help="config key=value, applied after denoiser.spatial=local")
    b.set_defaults(func=run)


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
