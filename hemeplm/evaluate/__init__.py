"""Evaluation: generated vs reference MD, energies and forces, and the ``hemeplm evaluate`` command.

One module per concern; the metrics each computes are tabled in its docstring:

- :mod:`~hemeplm.evaluate.stats`: Jensen–Shannon divergence, grid histograms, Pearson r, decorrelation time;
- :mod:`~hemeplm.evaluate.geometry`: what the metrics need to know about a system, Cα superposition;
- :mod:`~hemeplm.evaluate.checks`: validity of structures (bond lengths, clashes, ligand chemistry);
- :mod:`~hemeplm.evaluate.trajectory`: distributional and dynamic metrics against the reference (torsions,
  TICA, RMSF, contacts, ligand RMSD, decorrelation, transition paths);
- :mod:`~hemeplm.evaluate.baselines`: the ``static`` and ``random_walk`` baselines;
- :mod:`~hemeplm.evaluate.energy`: energy and force metrics and their figures;
- :mod:`~hemeplm.evaluate.report`: the text table, JSON values and wandb logging;
- :mod:`~hemeplm.evaluate.cli`: :func:`evaluate_trajectories` and the ``hemeplm evaluate`` command.

The names other modules use are re-exported here.
"""

from .checks import CLASH_CLASSES, bond_lengths, bond_ok_fractions, clashes_by_kind, clashes_per_frame, validity
from .cli import add_evaluate_parser, evaluate_trajectories
from .energy import energy_force_metrics, evaluate_energies, interaction_metrics
from .geometry import BOND_CLASSES, TORSION_TYPES, Geometry, build_geometry
from .report import json_ready, log_to_wandb, print_table
from .stats import binned, decorrelation_time, jensen_shannon
from .trajectory import TICA_PAIRS_PER_FEATURE, fit_reference, fit_tica, transition_paths

__all__ = [
    "BOND_CLASSES", "CLASH_CLASSES", "TICA_PAIRS_PER_FEATURE", "TORSION_TYPES", "Geometry", "add_evaluate_parser",
    "binned", "bond_lengths", "bond_ok_fractions", "build_geometry", "clashes_by_kind", "clashes_per_frame",
    "decorrelation_time", "energy_force_metrics", "evaluate_energies", "interaction_metrics", "evaluate_trajectories", "fit_reference",
    "fit_tica", "jensen_shannon", "json_ready", "log_to_wandb", "print_table", "transition_paths", "validity",
]
