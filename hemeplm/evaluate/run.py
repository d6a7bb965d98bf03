"""The ``hemeplm evaluate`` command and its Python API :func:`evaluate_trajectories`: generated vs reference MD.

Reference and generated trajectories are read by the same
:func:`hemeplm.data.load.load_system` (solvent and hydrogens dropped, Å) and
superposed on the protein Cα of the first reference frame. Every metric is
computed for the model and for the baselines of :mod:`hemeplm.evaluate.baselines`
on the same frames (metrics: :mod:`hemeplm.evaluate.trajectory` and
:mod:`hemeplm.evaluate.checks`). ``metrics.json`` holds
``{"model": {...}, "static": {...}, "random_walk": {...}, "prior": {...}, "info": {...}}``
(``prior`` only when given); ``info.reference`` holds the reference's own
decorrelation time, validity and kinetics. Generated frames are taken to be
spaced like the reference's unless ``--generated-timestep-ps`` says otherwise.

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
| ``tps_success_fraction`` | ``--task tps`` only: fraction of generated paths that leave their start state and later reach the end state; states are k-means clusters (5) of the reference's TIC1/TIC2; start = state of frame 0; end = state of the last frame of the paired reference trajectory when there are as many reference as generated trajectories, else of the model's last (conditioned) frame (for ``prior``, the same rule on its own paths); null when TICA is skipped | higher |
| ``tps_path_frames_mean`` | ``--task tps`` only: mean over successful paths of the frames from the last visit to the start state to the first arrival in the end state | — |
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
from hemeplm.evaluate.report import json_ready, print_table
from hemeplm.evaluate.stats import effective_sample_size, evenly_spaced
from hemeplm.evaluate.trajectory import CONTACT_CUTOFF_A, TICA_BINS, TORSION_BINS, Comparison, Reference, compare, fit_reference, rmsd_pairing, tic1_decorrelation, transition_paths
from hemeplm.io import check_outputs, sample_output
from hemeplm import plots
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


def evaluate_trajectories(topology: str | Path, reference: list[str | Path], generated: list[str | Path],
                          out_dir: str | Path, ligand: str | None = None, lag_ps: float | None = None,
                          task: str = "forecast", generated_topology: str | Path | None = None,
                          generated_timestep_ps: float | None = None, seed: int = 0, force: bool = False,
                          prior: list[str | Path] | None = None, ligand_file: str | Path | None = None,
                          posebusters_frames: int = POSEBUSTERS_FRAMES, weights: str | Path | None = None) -> dict:
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
        generated_timestep_ps: time between generated frames; default the reference's.
        seed: random-walk baseline and k-means.
        force: overwrite an existing ``metrics.json``.
        prior: trajectory files of the ``prior`` baseline (the same checkpoint sampled with its
            network output zeroed), read like ``generated``; None or empty leaves the column out.
        ligand_file: mol2/SDF of the ligand, for the bond orders of the PoseBusters checks
            (default: the reference topology's, see :func:`~hemeplm.evaluate.posebusters.ligand_template`).
        posebusters_frames: PoseBusters checks at most this many evenly spaced frames per ensemble; 0 skips them.
        weights: ``OUT.npz`` of ``hemeplm relax --reweight`` (:func:`hemeplm.forcefield.relax.load_weights`): (K,)
            weights, one per frame of ``generated`` concatenated, for the model column (module docstring).
    Returns:
        the metrics (as written, NaN as None).
    Raises:
        HemeplmError: naming the weights file when its count differs from the generated frames' count.
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

    gen_sys, gen_top = load_like_generated(generated)
    n_generated = sum(len(s) for s in gen_sys.segments)
    if frame_weights is not None and len(frame_weights) != n_generated:
        raise HemeplmError(f"holds {len(frame_weights)} weights but the generated trajectories have {n_generated} "
                           "frames", weights)
    prior_sys, prior_top = load_like_generated(prior) if prior else (None, None)
    dt_ref = ref_sys.timestep_ps
    dt_gen = generated_timestep_ps or dt_ref
    lag = max(1, round((lag_ps or dt_ref) / dt_ref))
    geom = build_geometry(ref_sys.topology, ref_sys.ligand, ref_sys.segments[0][0], topology)
    ref = fit_reference(geom, ref_sys.segments, dt_ref, lag, dt_gen, ref_sys.files[0])
    target = ref.frames[0, geom.ca]
    model = [superpose(s, geom.ca, target) for s in gen_sys.segments]
    ensembles = {"model": model, **baselines(model, ref, seed)}
    if prior_sys is not None:
        ensembles["prior"] = [superpose(s, geom.ca, target) for s in prior_sys.segments]
    results = {name: compare(ref, segs, dt_gen, frame_weights if name == "model" else None)
               for name, segs in ensembles.items()}
    kinetics, kinetics_note = fit_kinetics(ref.projections, lag, dt_ref, seed, ref.tica_note)
    template, posebusters_note = ligand_template(ref_sys, geom, ligand_file)
    if template is not None:
        posebusters_note += (f"; at most {posebusters_frames} evenly spaced frames per column" if posebusters_frames
                             else "; skipped: --posebusters-frames 0")
    files = {"model": gen_sys.files, "prior": prior_sys.files if prior_sys is not None else []}
    uncertainty = {name: read_uncertainty(f, [len(s) for s in ensembles[name]]) for name, f in files.items() if f}
    for name, r in results.items():
        r.metrics.update(kinetics_metrics(r.projections, kinetics, dt_gen))
        r.metrics.update(posebusters_checks(ensembles[name], geom, template, posebusters_frames))
        r.metrics.update(confidence_metrics(ensembles[name], uncertainty.get(name, (None,))[0], ref,
                                            ref_sys.segments, dt_gen))
    info = {
        "topology": str(topology), "generated_topology": str(gen_top),
        "reference_files": ref_sys.files, "generated_files": gen_sys.files, "task": task, "seed": seed,
        "n_atoms": geom.topology.n_atoms, "n_ligand_atoms": len(geom.ligand), "n_residues": len(geom.ca),
        "n_torsions": len(geom.torsions), "n_bonds": len(geom.bonds),
        "n_bonds_by_class": {c: int((geom.bond_class == k).sum()) for k, c in enumerate(BOND_CLASSES)},
        "reference_frames": [len(s) for s in ref_sys.segments], "generated_frames": [len(s) for s in model],
        "reference_timestep_ps": dt_ref, "generated_timestep_ps": dt_gen,
        "tica_lag_ps": lag * dt_ref, "tica_lag_frames": lag, "tica": ref.tica_note,
        "tica_features": f"{len(ref.tica_features)} sin/cos of phi, psi, chi1-4 of largest reference variance",
        "tica_histogram": f"2-D, {TICA_BINS}x{TICA_BINS} bins over the reference's TIC1/TIC2 range",
        "torsion_bins": TORSION_BINS, "contact_cutoff_A": CONTACT_CUTOFF_A,
        "ligand_rmsd_pairing": rmsd_pairing(sum(map(len, model)), len(ref.frames)),
        "reference": {**_reference_info(ref),
                      **(kinetics.reference if kinetics else kinetics_metrics(None, None, dt_ref))},
        "kinetics": kinetics_note, "posebusters": posebusters_note, "confidence": uncertainty["model"][1],
        "weights": None if frame_weights is None else {
            "file": str(weights), "n_frames": len(frame_weights),
            "effective_sample_size": effective_sample_size(frame_weights),
            "weighted": "model column only: torsion and TICA histograms, RMSF, contact frequencies, ligand RMSD "
                        "mean and (lower weighted) median; validity, PoseBusters, kinetics, confidence and "
                        "decorrelation time unweighted"},
    }
    if prior_sys is not None:
        info.update(prior_files=prior_sys.files, prior_topology=str(prior_top), prior_confidence=uncertainty["prior"][1],
                    prior_frames=[len(s) for s in ensembles["prior"]],
                    prior_ligand_rmsd_pairing=rmsd_pairing(sum(map(len, ensembles["prior"])), len(ref.frames)))
    if task == "tps":
        info.update(_add_tps(ref, results, len(ref_sys.segments), seed))
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if ref.tica is not None:
        fes = {"reference": ref.tica_hist, **{k: results[k].tica_hist for k in ("model", "prior") if k in results}}
        figures.append(plots.tica_fes(fes, ref.tica_edges, out / "tica_fes.png"))
    figures.append(plots.rmsf_plot({"reference": ref.rmsf, **{k: r.rmsf for k, r in results.items()}},
                                   geom.residue_numbers, out / "rmsf.png"))
    if len(geom.ligand):
        figures.append(plots.contact_plot({"reference": ref.contacts, **{k: r.contacts for k, r in results.items()}},
                                          geom.residue_labels, out / "contacts.png"))
    info["figures"] = [f.name for f in figures]
    if template is not None:
        info["ligand_poses"] = [write_poses(out / f"ligand_poses{'' if name == 'model' else '_' + name}.sdf",
                                            ensembles[name], [Path(f).name for f in f_list], geom, template).name
                                for name, f_list in files.items() if f_list]
    metrics = json_ready({**{k: r.metrics for k, r in results.items()}, "info": info})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _reference_info(ref: Reference) -> dict:
    """The reference's own decorrelation time and validity (on at most 200 evenly spaced frames)."""
    take = evenly_spaced(len(ref.frames), REFERENCE_VALIDITY_FRAMES)
    return {"tic1_decorrelation_ps": tic1_decorrelation(ref.projections, ref.dt_ps), **validity(ref.frames[take], ref)}


def _add_tps(ref: Reference, results: dict[str, Comparison], n_ref_segments: int, seed: int) -> dict:
    """Add the transition-path metrics to every result; return what goes into ``info``.

    The baselines start from the model's paths and take the model's end states; ``prior`` takes its
    own. When TICA was skipped the metrics stay NaN and ``info.tps`` gives the reason.
    """
    from deeptime.clustering import KMeans

    if ref.tica is None:
        return {"tps": ref.tica_note}
    kmeans = KMeans(n_clusters=TPS_STATES, fixed_seed=seed).fit(np.concatenate(ref.projections)).fetch_model()

    def end_states(paths: list[np.ndarray]) -> tuple[list[int], str]:
        paired = n_ref_segments == len(paths)
        how = ("state of the last frame of the paired reference trajectory" if paired
               else "state of each path's own last (conditioned) frame")
        return [int(kmeans.transform(p[-1:])[0]) for p in (ref.projections if paired else paths)], how

    model_ends, how = end_states(results["model"].projections)
    info = {"tps_states": TPS_STATES, "tps_end_state": how}
    for name, r in results.items():
        ends = model_ends
        if name == "prior":
            ends, info["prior_tps_end_state"] = end_states(r.projections)
        r.metrics.update(transition_paths([kmeans.transform(p) for p in r.projections], ends))
    return info


