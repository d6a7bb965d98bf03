"""Geometry that knows nothing about files or models: rigid frames and rotations, superposition,
torsion angles (:mod:`~hemeplm.geometry.rigid`, :mod:`~hemeplm.geometry.torsion`), and the structure
terms, clash geometry and projection that training, sampling and evaluation share
(:mod:`~hemeplm.geometry.structure`). Torch throughout; numpy callers convert at the boundary."""
