"""The ``hemeplm evaluate`` command and its Python API :func:`evaluate_trajectories`: generated vs reference MD.

Reference and generated trajectories are read by the same
:func:`hemeplm.data.load.load_system` (solvent and hydrogens dropped, Å) and
superposed on the protein Cα of the first reference frame. Every metric is
computed for the model and for the baselines of :mod:`hemeplm.evaluate.baselines`
on the same frames (metrics: :mod:`hemeplm.evaluate.trajectory` and
:mod:`hemeplm.evaluate.checks`). Up to four generated sets, columns in this order
(:data:`~hemeplm.evaluate.report.METHODS`): ``raw`` (``--raw``: the network's own output, sampled with
``--project-steps 0``) beside ``raw_prior`` (``--raw-prior``: the prior sampled the same way), then
``model`` (``--generated``: as sampled, projected) beside ``prior`` (``--prior``), then the ``static`` and
``random_walk`` baselines (built from ``--generated``) and the reference MD. The raw pair is the
headline: the projection (:func:`hemeplm.geometry.structure.project`) moves atoms toward the validity
checks, so only the raw columns say what the network learnt. ``metrics.json`` holds one dict per column
given and ``info``; ``info.reference`` holds the reference's own decorrelation time, validity (every check
of :mod:`~hemeplm.evaluate.checks`, on at most 200 evenly spaced frames, the same generated atoms as the
columns) and kinetics.

Frames a task gave are left out of every metric of every column: the ``conditioned_frames`` of the
sample summary (JSON) ``sample.py`` writes beside the trajectories (a forecast's frame 0, a transition
path's two end frames, every k-th frame of an upsampling), else ``--conditioned-frames``, else by
``--task`` (forecast 0, tps the first and the last, inpaint none; upsample needs the summary or the
option). For ``--task inpaint`` only terms with an inpainted atom count (the summary's
``inpainted_atoms``, else every ligand atom): the given protein is not scored. See
:mod:`~hemeplm.evaluate.trajectory` for how each metric treats them; ``info.scored_frames`` counts the
frames scored per column and trajectory, ``info.conditioned`` says where they came from.

The time between generated frames is ``--generated-timestep-ps`` when given (it must agree with the
summaries' ``timestep_ps``), else the summaries', else the generated files' own frame times (a DCD
holds none: 1 ps per frame, with a warning); never the reference's. Every set must have the same
spacing. ``info.generated_timestep_source`` says which.

The topology of the generated (and ``--prior``) files is ``--generated-topology``
when given, else the PDB ``sample.py`` writes beside them (``X.pdb`` for
``X.xtc`` or ``X_000.xtc``), else the reference's; when that does not fit either,
the error names the generated file. Beside the metrics of
:mod:`~hemeplm.evaluate.trajectory` and :mod:`~hemeplm.evaluate.checks`, every
column gets PoseBusters pass fractions (:mod:`~hemeplm.evaluate.posebusters`)
and kinetics (:mod:`~hemeplm.evaluate.kinetics`); the model and prior columns
get the calibration of the sampler's per-frame confidence score
(:mod:`~hemeplm.evaluate.confidence`).

``--weights OUT.npz`` (the Boltzmann weights of ``hemeplm relax --reweight``, one per generated
frame, the ``--generated`` files concatenated in the order given) weights the model column's
distributional metrics: torsion and TICA histograms, RMSF, contact frequencies, ligand RMSD mean and
(lower weighted) median (see :func:`~hemeplm.evaluate.trajectory.compare`). The validity checks
(bond lengths, clashes, ligand validity), PoseBusters, kinetics, confidence and decorrelation time
stay unweighted per-frame values, and so do the baseline columns. ``info.weights`` holds the file,
the frame count and the effective sample size 1/Σw².

Transition-path metrics, added with ``--task tps``:

| key | definition | better |
|---|---|---|
| ``tps_success_fraction`` | ``--task tps`` only: fraction of generated paths that leave their start state and later reach the end state, both in generated frames (the two given end frames never count: a path whose given last frame alone is in the end state fails); states are k-means clusters (5) of the reference's TIC1/TIC2; start = state of the path's frame 0 (the given start); end = the given end state: the state of the last frame of the paired reference trajectory (the k-th when there are as many reference as generated trajectories, else the only one; null otherwise), never the path's own last frame; the same rule for every column; null when TICA is skipped | higher |
| ``tps_path_frames_mean`` | ``--task tps`` only: mean over successful paths of the frames from the last visit to the start state (frame 0 included) to the first arrival in the end state | — |
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError
from hemeplm.evaluate.baselines import baselines
from hemeplm.evaluate.checks import validity
from hemeplm.evaluate.confidence import confidence_metrics, read_uncertainty
from hemeplm.evaluate.geometry import BOND_CLASSES, build_geometry, superpose
from hemeplm.evaluate.kinetics import fit_kinetics, kinetics_metrics
from hemeplm.evaluate.posebusters import MAX_FRAMES as POSEBUSTERS_FRAMES
from hemeplm.evaluate.posebusters import ligand_template, posebusters_checks, write_poses
from hemeplm.evaluate.report import METHODS, json_ready
from hemeplm.evaluate.stats import effective_sample_size, evenly_spaced
from hemeplm.evaluate.trajectory import CONTACT_CUTOFF_A, TICA_BINS, TORSION_BINS, Comparison, Reference, compare, drift, drift_span, fit_reference, rmsd_pairing, tic1_decorrelation, transition_paths
from hemeplm.io import check_outputs, sample_output
from hemeplm.plots import contact_plot, rmsf_plot, tica_fes
from hemeplm.data.load import load_system
from hemeplm.forcefield.relax import load_weights
from hemeplm.tasks import TASKS

TPS_STATES = 5
#: the reference's own validity is measured on at most this many evenly spaced frames
REFERENCE_VALIDITY_FRAMES = 200


def _check_same_atoms(ref_sys, gen_sys, path: str | Path) -> None:
    """Raise :class:`HemeplmError` naming ``path`` unless both systems keep the same atoms (by name)."""
    ref_atoms = [f"{a.residue.name}{a.residue.resSeq}:{a.name}" for a in ref_sys.topology.atoms]
    gen_atoms = [f"{a.residue.name}{a.residue.resSeq}:{a.name}" for a in gen_sys.topology.atoms]
    if len(ref_atoms) != len(gen_atoms):
        raise HemeplmError(f"has {len(gen_atoms)} protein/ligand heavy atoms but the reference has {len(ref_atoms)}",
                           path)
    diff = [k for k, (a, b) in enumerate(zip(ref_sys.topology.atoms, gen_sys.topology.atoms)) if a.name != b.name]
    if diff:
        raise HemeplmError(f"atom {diff[0]} is {gen_atoms[diff[0]]} but the reference's is {ref_atoms[diff[0]]}", path)
    if not np.array_equal(ref_sys.ligand, gen_sys.ligand):
        raise HemeplmError(f"ligand selection gives {len(gen_sys.ligand)} atoms here and {len(ref_sys.ligand)} "
                           "in the reference", path)


def _summaries(files: list[str | Path]) -> list[dict | None]:
    """Per trajectory file, the sample summary (JSON) ``sample.py`` wrote beside it, or None.

    Raises:
        HemeplmError: naming a summary that is not readable JSON.
    """
    found, read = [], {}
    for f in files:
        path = sample_output(f, ".json")
        if path is not None and str(path) not in read:
            try:
                read[str(path)] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise HemeplmError(f"not a readable sample summary: {exc}", path) from exc
        found.append(None if path is None else {**read[str(path)], "_path": str(path)})
    return found


def _timestep(summaries: list[dict | None], system, given: float | None) -> tuple[float, str]:
    """Time between the frames of one generated set and where it came from (module docstring)."""
    stated = {s["_path"]: float(s["timestep_ps"]) for s in summaries if s is not None and "timestep_ps" in s}
    values = list(stated.values())
    if values and not np.allclose(values, values[0], rtol=1e-3):
        raise HemeplmError(f"sample summaries give different frame spacings: "
                           f"{', '.join(f'{p}: {v:g} ps' for p, v in stated.items())}")
    if given is not None:
        if values and abs(values[0] - given) > 1e-3 * given:
            raise HemeplmError(f"says the generated frames are {values[0]:g} ps apart, but --generated-timestep-ps "
                               f"is {given:g}", next(iter(stated)))
        return float(given), "--generated-timestep-ps"
    if values:
        return values[0], f"timestep_ps of {', '.join(sorted(stated))}"
    return float(system.timestep_ps), "the generated files' frame times"


def _scored(files: list[str], frames: list[int], summaries: list[dict | None], task: str,
            conditioned: list[int] | None) -> tuple[list[np.ndarray], str]:
    """Per trajectory, (F_s,) bool: the frames that were generated, not given (module docstring)."""
    out, sources = [], set()
    for f, n, summary in zip(files, frames, summaries):
        if summary is not None and summary.get("task", task) != task:
            raise HemeplmError(f"was sampled with --task {summary['task']}; evaluate it with --task {summary['task']}",
                               summary["_path"])
        if conditioned is not None:
            given, source = conditioned, "--conditioned-frames"
        elif summary is not None and "conditioned_frames" in summary:
            given, source = summary["conditioned_frames"], f"conditioned_frames of {summary['_path']}"
        elif task == "upsample":
            raise HemeplmError("--task upsample: which frames were given needs the sample summary beside the "
                               "generated file (its conditioned_frames) or --conditioned-frames", f)
        else:
            given = {"forecast": [0], "tps": [0, -1]}.get(task, [])
            source = f"--task {task}: " + ({"forecast": "frame 0", "tps": "the first and last frames"}.get(task)
                                           or "no frame")
        keep = np.ones(n, dtype=bool)
        bad = [i for i in given if not -n <= int(i) < n]
        if bad:
            raise HemeplmError(f"conditioned frame {bad[0]} is out of range (the trajectory has {n} frames)", f)
        keep[[int(i) for i in given]] = False
        out.append(keep)
        sources.add(source)
    return out, "; ".join(sorted(sources))


def _generated_atoms(task: str, summaries: list[dict | None], system) -> tuple[np.ndarray | None, str | None]:
    """(A,) bool, the atoms ``--task inpaint`` generated (None for the other tasks), and where they came from."""
    if task != "inpaint":
        return None, None
    listed = [s["inpainted_atoms"] for s in summaries if s is not None and s.get("inpainted_atoms") is not None]
    if listed:
        atoms = np.isin(system.source_index, np.asarray(listed[0], dtype=np.int64))
        return atoms, f"inpainted_atoms of {summaries[0]['_path']} ({int(atoms.sum())} atoms)"
    atoms = np.zeros(system.n_atoms, dtype=bool)
    atoms[system.ligand] = True
    return atoms, f"every ligand atom ({int(atoms.sum())}): no sample summary lists inpainted_atoms"


def evaluate_trajectories(topology: str | Path, reference: list[str | Path], generated: list[str | Path],
                          out_dir: str | Path, ligand: str | None = None, lag_ps: float | None = None,
                          task: str = "forecast", generated_topology: str | Path | None = None,
                          generated_timestep_ps: float | None = None, seed: int = 0, force: bool = False,
                          prior: list[str | Path] | None = None, ligand_file: str | Path | None = None,
                          posebusters_frames: int = POSEBUSTERS_FRAMES, weights: str | Path | None = None,
                          raw: list[str | Path] | None = None, raw_prior: list[str | Path] | None = None,
                          conditioned_frames: list[int] | None = None) -> dict:
    """Compare generated trajectories with reference MD; write metrics.json and figures.

    Args:
        topology: topology of the reference trajectories (and of the generated ones when
            ``generated_topology`` is not given and no PDB lies beside them, see the module docstring).
        reference, generated: trajectory files, one per trajectory.
        out_dir: gets ``metrics.json``, ``rmsf.png``, (when TICA is fitted) ``tica_fes.png`` and
            (with a ligand) ``contacts.png`` and the ligand poses as SDF.
        ligand: mdtraj selection (see :func:`~hemeplm.data.load.select_ligand`).
        lag_ps: TICA lag time; default one reference frame.
        task: one of :data:`TASKS`; ``tps`` adds the transition-path metrics.
        generated_timestep_ps: time between generated frames; default the sample summaries', else the files'
            own frame times (module docstring).
        seed: random-walk baseline and k-means.
        force: overwrite an existing ``metrics.json``.
        prior: trajectory files of the ``prior`` baseline (the same checkpoint sampled with its
            network output zeroed), read like ``generated``; None or empty leaves the column out.
        ligand_file: mol2/SDF of the ligand, for the bond orders of the PoseBusters checks
            (default: the reference topology's, see :func:`~hemeplm.evaluate.posebusters.ligand_template`).
        posebusters_frames: PoseBusters checks at most this many evenly spaced frames per ensemble; 0 skips them.
        weights: ``OUT.npz`` of ``hemeplm relax --reweight`` (:func:`hemeplm.forcefield.relax.load_weights`): (K,)
            weights, one per frame of ``generated`` concatenated, for the model column (module docstring).
        raw, raw_prior: trajectory files of the ``raw`` and ``raw_prior`` columns (the model and the prior
            sampled with ``--project-steps 0``), read like ``generated``; None or empty leaves them out.
        conditioned_frames: output frames given in every generated trajectory (negative: from the end); None:
            from the sample summaries, else by ``task`` (module docstring).
    Returns:
        the metrics (as written, NaN as None).
    Raises:
        HemeplmError: naming the weights file when its count differs from the generated frames' count; naming a
            generated file or summary whose spacing, task or conditioned frames do not fit.
    """

    out = Path(out_dir)
    check_outputs([out / "metrics.json"], force, out)
    if task not in TASKS:
        raise HemeplmError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if not generated:
        raise HemeplmError("no generated trajectory given")
    frame_weights = None
    if weights is not None:
        frame_weights = load_weights(weights)
    ref_sys = load_system(topology, reference, ligand=ligand)

    def load_like_generated(files: list[str | Path]):
        """The files' system (with the reference's atoms) and the topology it was read with."""
        beside = sample_output(files[0], ".pdb")
        top = generated_topology or beside or topology
        try:
            system = load_system(top, files, ligand=ligand)
            _check_same_atoms(ref_sys, system, top)
        except HemeplmError as exc:
            if generated_topology or beside:
                raise
            raise HemeplmError(f"no topology beside it ({Path(files[0]).with_suffix('.pdb').name}, as sample.py "
                               f"writes) and the reference topology does not fit it ({exc}); pass "
                               "--generated-topology", files[0]) from exc
        return system, top

    given = {"model": generated, "prior": prior, "raw": raw, "raw_prior": raw_prior}
    systems = {name: load_like_generated(files) for name, files in given.items() if files}
    gen_sys, gen_top = systems["model"]
    n_generated = sum(len(s) for s in gen_sys.segments)
    if frame_weights is not None and len(frame_weights) != n_generated:
        raise HemeplmError(f"holds {len(frame_weights)} weights but the generated trajectories have {n_generated} "
                           "frames", weights)
    summaries = {name: _summaries(system.files) for name, (system, _) in systems.items()}
    spacing = {name: _timestep(summaries[name], system, generated_timestep_ps)
               for name, (system, _) in systems.items()}
    dt_gen, dt_source = spacing["model"]
    for name, (dt, _) in spacing.items():
        if abs(dt - dt_gen) > 1e-3 * dt_gen:
            raise HemeplmError(f"its frames are {dt:g} ps apart, but those of --generated are {dt_gen:g} ps apart",
                               systems[name][0].files[0])
    dt_ref = ref_sys.timestep_ps
    lag = max(1, round((lag_ps or dt_ref) / dt_ref))
    geom = build_geometry(ref_sys.topology, ref_sys.ligand, ref_sys.segments[0][0], topology)
    ref = fit_reference(geom, ref_sys.segments, dt_ref, lag, dt_gen, ref_sys.files[0])
    target = ref.frames[0, geom.ca]
    atoms, atoms_source = _generated_atoms(task, summaries["model"], gen_sys)
    scored, conditioned = {}, {}
    for name, (system, _) in systems.items():
        scored[name], conditioned[name] = _scored(system.files, [len(x) for x in system.segments], summaries[name],
                                                  task, conditioned_frames)
    ensembles = {name: [superpose(x, geom.ca, target) for x in system.segments] for name, (system, _) in
                 systems.items()}
    model = ensembles["model"]
    ensembles.update(baselines(model, ref, seed, atoms))
    for name in ("static", "random_walk"):
        scored[name], conditioned[name] = scored["model"], conditioned["model"]
    ensembles = {name: ensembles[name] for name in METHODS if name in ensembles}
    results = {name: compare(ref, segs, dt_gen, frame_weights if name == "model" else None, scored[name], atoms)
               for name, segs in ensembles.items()}
    kinetics, kinetics_note = fit_kinetics(ref.projections, lag, dt_ref, seed, ref.tica_note)
    template, posebusters_note = ligand_template(ref_sys, geom, ligand_file)
    if template is not None:
        posebusters_note += (f"; at most {posebusters_frames} evenly spaced frames per column" if posebusters_frames
                             else "; skipped: --posebusters-frames 0")
    files = {name: system.files for name, (system, _) in systems.items()}
    uncertainty = {name: read_uncertainty(f, [len(x) for x in ensembles[name]]) for name, f in files.items()}
    for name, r in results.items():
        kept = [x[k] for x, k in zip(ensembles[name], r.scored) if k.any()]
        r.metrics.update(kinetics_metrics(r.runs, kinetics, dt_gen))
        r.metrics.update(posebusters_checks(kept, geom, template, posebusters_frames))
        r.metrics.update(confidence_metrics(ensembles[name], uncertainty.get(name, (None,))[0], ref,
                                            ref_sys.segments, dt_gen, r.scored))
    span = drift_span(model, dt_gen)
    info = {
        "topology": str(topology), "generated_topology": str(gen_top),
        "reference_files": ref_sys.files, "generated_files": gen_sys.files, "task": task, "seed": seed,
        "n_atoms": geom.topology.n_atoms, "n_ligand_atoms": len(geom.ligand), "n_residues": len(geom.ca),
        "n_torsions": len(geom.torsions), "n_bonds": len(geom.bonds),
        "n_bonds_by_class": {c: int((geom.bond_class == k).sum()) for k, c in enumerate(BOND_CLASSES)},
        "n_peptide_bonds": len(geom.peptide), "n_ramachandran_residues": len(geom.rama),
        "reference_frames": [len(x) for x in ref_sys.segments], "generated_frames": [len(x) for x in model],
        "scored_frames": {name: [int(k.sum()) for k in r.scored] for name, r in results.items()},
        "conditioned": {name: conditioned[name] for name in results},
        "generated_atoms": atoms_source or "all",
        "reference_timestep_ps": dt_ref, "generated_timestep_ps": dt_gen, "generated_timestep_source": dt_source,
        "tica_lag_ps": lag * dt_ref, "tica_lag_frames": lag, "tica": ref.tica_note,
        "tica_features": f"{len(ref.tica_features)} sin/cos of phi, psi, chi1-4 of largest reference variance",
        "tica_histogram": f"2-D, {TICA_BINS}x{TICA_BINS} bins over the reference's TIC1/TIC2 range",
        "torsion_bins": TORSION_BINS, "contact_cutoff_A": CONTACT_CUTOFF_A,
        "ligand_rmsd_pairing": rmsd_pairing(sum(map(len, model)), len(ref.frames)),
        "drift_span_ps": span,
        "reference": {**_reference_info(ref, atoms), **drift(ref_sys.segments, geom, dt_ref, span),
                      **(kinetics.reference if kinetics else kinetics_metrics(None, None, dt_ref))},
        "kinetics": kinetics_note, "posebusters": posebusters_note, "confidence": uncertainty["model"][1],
        "weights": None if frame_weights is None else {
            "file": str(weights), "n_frames": len(frame_weights),
            "effective_sample_size": effective_sample_size(frame_weights),
            "weighted": "model column only: torsion and TICA histograms, RMSF, contact frequencies, ligand RMSD "
                        "mean and (lower weighted) median; validity, PoseBusters, kinetics, confidence and "
                        "decorrelation time unweighted"},
    }
    for name in ("prior", "raw", "raw_prior"):
        if name in systems:
            system, top = systems[name]
            info.update({f"{name}_files": system.files, f"{name}_topology": str(top),
                         f"{name}_confidence": uncertainty[name][1],
                         f"{name}_frames": [len(x) for x in ensembles[name]],
                         f"{name}_ligand_rmsd_pairing": rmsd_pairing(sum(map(len, ensembles[name])), len(ref.frames))})
    if task == "tps":
        info.update(_add_tps(ref, results, len(ref_sys.segments), seed))
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    sampled = [name for name in METHODS if name in systems]
    if ref.tica is not None:
        fes = {"reference": ref.tica_hist, **{k: results[k].tica_hist for k in sampled
                                              if results[k].tica_hist is not None}}
        figures.append(tica_fes(fes, ref.tica_edges, out / "tica_fes.png"))
    figures.append(rmsf_plot({"reference": ref.rmsf, **{k: r.rmsf for k, r in results.items()}},
                                   geom.residue_numbers, out / "rmsf.png"))
    if len(geom.ligand):
        figures.append(contact_plot({"reference": ref.contacts, **{k: r.contacts for k, r in results.items()}},
                                          geom.residue_labels, out / "contacts.png"))
    info["figures"] = [f.name for f in figures]
    if template is not None:
        info["ligand_poses"] = [write_poses(out / f"ligand_poses{'' if name == 'model' else '_' + name}.sdf",
                                            ensembles[name], [Path(f).name for f in files[name]], geom, template).name
                                for name in sampled]
    metrics = json_ready({**{k: r.metrics for k, r in results.items()}, "info": info})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _reference_info(ref: Reference, atoms: np.ndarray | None = None) -> dict:
    """The reference's own decorrelation time and validity (on at most 200 evenly spaced frames; with ``atoms``,
    only the terms with one of those atoms, as the columns)."""
    take = evenly_spaced(len(ref.frames), REFERENCE_VALIDITY_FRAMES)
    return {"tic1_decorrelation_ps": tic1_decorrelation(ref.projections, ref.dt_ps),
            **validity(ref.frames[take], ref, atoms)}


def _add_tps(ref: Reference, results: dict[str, Comparison], n_ref_segments: int, seed: int) -> dict:
    """Add the transition-path metrics to every result; return what goes into ``info``.

    Every column is judged by one rule (module table): the start state of a path is that of its frame 0, its
    end state that of the last frame of the paired reference trajectory. When TICA was skipped, or a column's
    paths cannot be paired with the reference's trajectories, its metrics stay NaN and ``info.tps`` says why.
    """
    from deeptime.clustering import KMeans

    if ref.tica is None:
        return {"tps": ref.tica_note}
    kmeans = KMeans(n_clusters=TPS_STATES, fixed_seed=seed).fit(np.concatenate(ref.projections)).fetch_model()
    ends = [int(kmeans.transform(p[-1:])[0]) for p in ref.projections]
    notes = {}
    for name, r in results.items():
        if r.projections is None:
            notes[name] = "no TIC projection (no generated torsion)"
            continue
        n = len(r.projections)
        if n_ref_segments not in (1, n):
            notes[name] = (f"{n} paths and {n_ref_segments} reference trajectories: no pairing, no given end state")
            continue
        paired = ends if n_ref_segments == n else ends * n
        r.metrics.update(transition_paths([kmeans.transform(p) for p in r.projections], paired, r.scored))
    how = ("state of the last frame of the paired reference trajectory" if n_ref_segments > 1
           else "state of the reference's last frame")
    return {"tps_states": TPS_STATES, "tps_end_state": how, **({"tps": notes} if notes else {})}
