"""Metrics for people and files: the text table of ``hemeplm evaluate``, JSON values, wandb logging."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hemeplm.evaluate.checks import CLASH_CLASSES
from hemeplm.evaluate.geometry import BOND_CLASSES

#: columns of ``metrics.json`` and :func:`print_table`, in the table's order: the network's raw output beside the
#: raw prior (both sampled with ``--project-steps 0``), then the projected pair, then the baselines; ``raw``,
#: ``raw_prior`` and ``prior`` only when their trajectories are given
METHODS = ("raw", "raw_prior", "model", "prior", "static", "random_walk")

#: rows of :func:`print_table`: metric key and which direction is better
TABLE_ROWS = (
    ("torsion_jsd", "lower"), ("tica_jsd", "lower"), ("rmsf_pearson", "higher"),
    ("contact_jsd", "lower"), ("contact_pearson", "higher"),
    ("ligand_rmsd_mean_A", "lower"), ("ligand_rmsd_median_A", "lower"),
    ("tic1_decorrelation_ps", "~ref"), ("ca_rmsd_end_A", "~ref"), ("ca_rg_change_end_A", "~ref"),
    ("pocket_kept_end_fraction", "higher"),
    ("physical_filter_pass_fraction", "higher"),
    ("omega_outlier_fraction", "lower"), ("peptide_angle_outlier_fraction", "lower"),
    ("ramachandran_outlier_fraction", "lower"), ("bond_ok_fraction", "higher"),
    *((f"bond_ok_fraction_{c}", "higher") for c in BOND_CLASSES), ("clashes_per_frame", "lower"),
    *((f"clashes_per_frame_{c}", "lower") for c in CLASH_CLASSES),
    ("ligand_valid_fraction", "higher"), ("posebusters_pass_fraction", "higher"),
    ("tps_success_fraction", "higher"), ("tps_path_frames_mean", ""),
    ("kinetics_population_jsd", "lower"), ("kinetics_timescale_1_ps", "~ref"),
    ("confidence_spearman_ligand_rmsd", "higher"), ("confidence_spearman_violations", "higher"),
    ("lead_time_spearman_ligand_rmsd", ""),
)


def json_ready(value):
    """Numbers, arrays and dicts as JSON values; NaN and infinities become null."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def print_table(metrics: dict) -> str:
    """The main scalar metrics, the generated columns and baselines in :data:`METHODS` order, then the reference
    (its own value, where it has one: decorrelation, validity, kinetics).

    Args:
        metrics: what :func:`~hemeplm.evaluate.run.evaluate_trajectories` returns (or ``metrics.json`` holds).
    Returns:
        a fixed-width text table, one column per method of :data:`METHODS` present in ``metrics``;
        metrics undefined for every method are left out.
    """
    def missing(v) -> bool:
        return v is None or v != v

    ref = metrics.get("info", {}).get("reference", {})
    methods = [m for m in METHODS if m in metrics]
    cols = ("metric", "better", *methods, "reference")
    rows = []
    for key, better in TABLE_ROWS:
        values = [metrics[m].get(key) for m in methods]
        if all(missing(v) for v in values):
            continue
        rows.append((key, better, *("-" if missing(v) else f"{v:.4g}" for v in (*values, ref.get(key)))))
    widths = [max(len(str(r[k])) for r in (cols, *rows)) for k in range(len(cols))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in (cols, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def log_to_wandb(run, metrics: dict, figures: list[str | Path], step: int | None = None) -> dict:
    """Log scalar metrics and figures to a wandb run.

    Nested dicts are flattened with ``/`` (``model/torsion_jsd``); values that
    are not finite numbers (None, NaN, strings, lists) are skipped. Figures go
    under ``figures/<file stem>`` as ``wandb.Image``.

    Args:
        run: a ``wandb.init`` run; metrics: e.g. ``metrics.json``'s content; figures: PNG paths.
    Returns:
        the dict passed to ``run.log``.
    """
    import wandb

    def flat(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}/")
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                    and math.isfinite(float(v)):
                yield f"{prefix}{k}", float(v)

    payload = dict(flat(metrics))
    payload.update({f"figures/{Path(f).stem}": wandb.Image(str(f)) for f in figures})
    run.log(payload, step=step)
    return payload
