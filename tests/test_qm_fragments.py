"""AI2BMD-style fragmentation: ACE-X-NME units minus ACE-NME overlaps count every atom and bond once, and
the recombined forces are minus the gradient of the recombined energy (link atoms by the chain rule)."""

from __future__ import annotations

import numpy as np
import pytest

from hemeplm.data.molecules import from_sequence
from hemeplm.forcefield.fragmentation import Fragmented, fragments

pytest.importorskip("tblite")


@pytest.fixture(scope="module")
def tripeptide():
    return from_sequence("GAG", "GAG", capped=False)


def test_units_and_overlaps_count_every_atom_and_bond_once(tripeptide):
    parts = fragments(tripeptide.topology, tripeptide.numbers)
    assert [(p.name, p.charge, p.sign) for p in parts] == [
        ("ACE-GLY1-NME", 1, 1), ("ACE-ALA2-NME", 0, 1), ("ACE-GLY3-NME", -1, 1), ("ACE-NME 1/2", 0, -1),
        ("ACE-NME 2/3", 0, -1)]
    assert all(len(p.numbers) == 12 for p in parts if p.sign < 0)  # N-methylacetamide, C3H7NO
    counts = np.zeros(len(tripeptide.numbers))
    for p in parts:
        counts[p.atoms] += p.sign
    assert (counts == 1).all()
    for a, b in tripeptide.topology.bonds:
        assert sum(p.sign for p in parts if a.index in p.atoms and b.index in p.atoms) == 1


@pytest.mark.parametrize("long_range", [None, "mm"])
def test_fragmented_forces_are_minus_the_gradient(tripeptide, long_range):
    frag = Fragmented(tripeptide.topology, tripeptide.numbers, long_range)
    x = tripeptide.positions + np.random.default_rng(0).normal(0, 0.05, tripeptide.positions.shape)
    _, f = frag(x)
    if long_range == "mm":  # residues 1 and 3 share no fragment: their pairs carry the force field's terms
        assert len(frag.pairs[0]) > 0 and frag.long_range(x)[0] != 0.0
    h = 1e-3
    for atom, k in [(0, 0), (5, 1), (12, 2)]:  # atoms at cut bonds get link-atom forces too
        xp, xm = x.copy(), x.copy()
        xp[atom, k] += h
        xm[atom, k] -= h
        assert -(frag(xp)[0] - frag(xm)[0]) / (2 * h) == pytest.approx(f[atom, k], abs=0.01)
