"""Dihedral (torsion) angles of point quadruples, and bond angles of triples."""

from __future__ import annotations

import torch


def dihedral_angle(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """Dihedral angles (radians, in (-π, π]) of points (..., 3) -> (...)."""
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = torch.cross(b0, b1, dim=-1), torch.cross(b1, b2, dim=-1)
    m1 = torch.cross(n1, torch.nn.functional.normalize(b1, dim=-1), dim=-1)
    return torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))


def dihedrals(x: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """Dihedral angles (radians).

    Args:
        x: (..., A, 3); quads: (..., 4) atom indices (-1 allowed: gives 0).
    Returns:
        (..., *quads.shape[:-1]) angles in (-pi, pi].
    """
    q = quads.clamp(min=0)
    return dihedral_angle(*(x[..., q[..., k], :] for k in range(4)))


def bond_angle(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Angles (radians, in [0, π]) at ``p1`` of points (..., 3) -> (...)."""
    a, b = p0 - p1, p2 - p1
    return torch.atan2(torch.cross(a, b, dim=-1).norm(dim=-1), (a * b).sum(-1))
