"""Rigid frames: rotations as matrices and rotation vectors, N–CA–C residue frames, and the one
least-squares superposition (Kabsch) that loading, encoding and evaluation all use."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def rotvec_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vectors -> (..., 3, 3) matrices (Rodrigues; smooth through 0)."""
    theta2 = (v * v).sum(-1, keepdim=True)[..., None]
    theta = (theta2 + 1e-12).sqrt()
    small = theta2 < 1e-6
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-12))
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye + a * k + b * (k @ k)


def matrix_to_rotvec(r: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors (angle in [0, π]), via the quaternion."""
    m = r
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # the four candidate quaternions (w, x, y, z) scaled by 4 times their largest component
    cands = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr, m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - tr,
                     m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 + 2 * m[..., 2, 2] - tr], -1)], -2)  # (..., 4, 4)
    diag = torch.stack([1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr, 1 + 2 * m[..., 2, 2] - tr], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype)
    s = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    return q[..., 1:] * torch.where(s > 1e-8, angle / s.clamp(min=1e-8), 2.0 + angle ** 2 / 12)


def kabsch(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares rigid fit ``y ≈ R p + c``.

    Args:
        p, y: (..., M, 3); w: (..., M) weights (0 drops a point).
    Returns:
        R (..., 3, 3) proper rotation and c (..., 3).
    """
    w = w.to(p.dtype)[..., None]
    total = w.sum(-2).clamp(min=1e-9)
    pc, yc = (p * w).sum(-2) / total, (y * w).sum(-2) / total
    h = ((y - yc[..., None, :]) * w).transpose(-1, -2) @ (p - pc[..., None, :])  # (..., 3, 3)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(u @ vt))
    fix = torch.ones(*d.shape, 3, dtype=p.dtype, device=p.device)
    fix[..., 2] = d
    rot = u @ torch.diag_embed(fix) @ vt
    return rot, yc - (rot @ pc[..., None]).squeeze(-1)


def superpose_onto(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``p`` (..., M, 3) moved rigidly onto ``y`` (..., M, 3) by the weighted fit of :func:`kabsch` (w (..., M))."""
    rot, shift = kabsch(p, y, w)
    return p @ rot.transpose(-1, -2) + shift[..., None, :]


def mean_structure(points: torch.Tensor, w: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Mean of point sets (S, M, 3) superposed on it (weights (M,) for the fit), by iterated superposition
    starting from the first set -> (M, 3)."""
    mean = points[0]
    for _ in range(iterations):
        mean = superpose_onto(points, mean.expand_as(points), w.expand(points.shape[:-1])).mean(0)
    return mean


def residue_frames(x: torch.Tensor, frame_atoms: torch.Tensor) -> torch.Tensor:
    """N-CA-C frames by Gram-Schmidt.

    Args:
        x: (..., A, 3) coordinates.
        frame_atoms: (R, 3) indices of N, CA, C.
    Returns:
        (..., R, 3, 3) rotation matrices whose columns are the frame axes.
    """
    n, ca, c = (x[..., frame_atoms[:, k], :] for k in range(3))
    e1 = torch.nn.functional.normalize(c - ca, dim=-1)
    u2 = n - ca
    e2 = torch.nn.functional.normalize(u2 - (u2 * e1).sum(-1, keepdim=True) * e1, dim=-1)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def superposition(mobile: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kabsch for numpy callers (loading, evaluation), in float64: the best rotation and translation mapping each
    frame of ``mobile`` (F, K, 3) onto ``target`` (K, 3), every point weighted alike.

    The same fit as :func:`kabsch`, written on numpy arrays rather than by calling it: the loader's
    superposed frames are the model's training data, and this form keeps them (and the feature caches
    built from them) bit for bit what earlier versions made. Through :func:`kabsch` 78 of the 778,800 float32
    coordinates of the T4L demo MD round differently (by ≤ 4·10⁻⁶ Å), enough to change a trained model's digits.

    Returns:
        R (F, 3, 3) and t (F, 3) such that ``x @ R.transpose(-1, -2) + t`` superposes.
    """
    mc = mobile.mean(axis=1, keepdims=True)
    tc = target.mean(axis=0)
    h = np.einsum("fki,kj->fij", mobile - mc, target - tc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("fij,fjk->fik", u, vt)))
    fix = np.ones((len(mobile), 3))
    fix[:, 2] = d
    rot = np.einsum("fji,fj,fkj->fik", vt, fix, u)
    trans = tc - np.einsum("fij,fj->fi", rot, mc[:, 0])
    return rot, trans
