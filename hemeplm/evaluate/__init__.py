"""Evaluation: generated vs reference MD, energies and forces, and the ``hemeplm evaluate`` command.

One module per concern; the metrics each computes are tabled in its docstring:

- :mod:`~hemeplm.evaluate.stats`: Jensen–Shannon divergence, grid histograms, Pearson r, decorrelation time;
- :mod:`~hemeplm.evaluate.geometry`: what the metrics need to know about a system, Cα superposition;
- :mod:`~hemeplm.evaluate.checks`: validity of structures (bond lengths, clashes, ligand chemistry);
- :mod:`~hemeplm.evaluate.trajectory`: distributional and dynamic metrics against the reference (torsions,
  TICA, RMSF, contacts, ligand RMSD, decorrelation, transition paths);
- :mod:`~hemeplm.evaluate.kinetics`: MSM on the TICA projection (populations, first-passage times, timescales);
- :mod:`~hemeplm.evaluate.posebusters`: PoseBusters checks of every ligand pose, poses as SDF;
- :mod:`~hemeplm.evaluate.confidence`: the sampler's per-frame confidence score against per-frame error;
- :mod:`~hemeplm.evaluate.baselines`: the ``static`` and ``random_walk`` baselines;
- :mod:`~hemeplm.evaluate.energy`: energy and force metrics and their figures;
- :mod:`~hemeplm.evaluate.report`: the text table, JSON values and wandb logging;
- :mod:`~hemeplm.evaluate.cli`: :func:`evaluate_trajectories` and the ``hemeplm evaluate`` command.

The names other modules use are re-exported here.
"""

from .checks import (CLASH_CLASSES, bond_lengths, bond_ok_fractions, clash_counts, clashes_by_kind, clashes_per_frame,
                     validity, violations_per_frame)
from .cli import add_evaluate_parser, evaluate_trajectories
from .confidence import confidence_metrics, read_uncertainty
from .energy import energy_force_metrics, evaluate_energies, interaction_metrics
from .geometry import BOND_CLASSES, TORSION_TYPES, Geometry, build_geometry
from .kinetics import Kinetics, fit_kinetics, kinetics_metrics
from .posebusters import ligand_template, posebusters_checks, write_poses
from .report import json_ready, log_to_wandb, print_table
from .stats import binned, decorrelation_time, jensen_shannon, spearman
from .trajectory import TICA_PAIRS_PER_FEATURE, fit_reference, fit_tica, transition_paths

__all__ = [
    "BOND_CLASSES", "CLASH_CLASSES", "TICA_PAIRS_PER_FEATURE", "TORSION_TYPES", "Geometry", "Kinetics",
    "add_evaluate_parser", "binned", "bond_lengths", "bond_ok_fractions", "build_geometry", "clash_counts",
    "clashes_by_kind", "clashes_per_frame", "confidence_metrics", "decorrelation_time", "energy_force_metrics",
    "evaluate_energies", "evaluate_trajectories", "fit_kinetics", "fit_reference", "fit_tica", "interaction_metrics",
    "jensen_shannon", "json_ready", "kinetics_metrics", "ligand_template", "log_to_wandb", "posebusters_checks",
    "print_table", "read_uncertainty", "spearman", "transition_paths", "validity", "violations_per_frame", "write_poses",
]
