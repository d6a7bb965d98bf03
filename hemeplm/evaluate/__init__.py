"""Evaluation: generated vs reference MD, energies and forces, and the ``hemeplm evaluate`` command.

One module per concern; the metrics each computes are tabled in its docstring:

- :mod:`~hemeplm.evaluate.stats`: Jensen–Shannon divergence, grid histograms, Pearson r, decorrelation time;
- :mod:`~hemeplm.evaluate.geometry`: what the metrics need to know about a system, Cα superposition;
- :mod:`~hemeplm.evaluate.checks`: validity of structures (bond lengths, clashes, ligand chemistry, ω,
  Ramachandran and peptide-angle outliers, BioEmu's physical filter);
- :mod:`~hemeplm.evaluate.trajectory`: distributional and dynamic metrics against the reference (torsions,
  TICA, RMSF, contacts, ligand RMSD, decorrelation, transition paths);
- :mod:`~hemeplm.evaluate.kinetics`: MSM on the TICA projection (populations, first-passage times, timescales);
- :mod:`~hemeplm.evaluate.posebusters`: PoseBusters checks of every ligand pose, poses as SDF;
- :mod:`~hemeplm.evaluate.confidence`: the sampler's per-frame confidence score against per-frame error;
- :mod:`~hemeplm.evaluate.baselines`: the ``static`` and ``random_walk`` baselines;
- :mod:`~hemeplm.evaluate.energy`: energy and force metrics and their figures;
- :mod:`~hemeplm.evaluate.report`: the text table, JSON values and wandb logging;
- :mod:`~hemeplm.evaluate.run`: :func:`evaluate_trajectories`, what ``hemeplm evaluate`` runs.

Import from the module that holds a name: this package re-exports nothing, so importing one
metric module does not import the others (nor the command's dependencies).
"""
