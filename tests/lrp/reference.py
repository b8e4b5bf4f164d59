"""A direct NumPy evaluation of the paper's LRP formulas on dense matrices, for checking the engine.

Every linear operation is written as a matrix acting on flattened (C, H, W)
vectors of one image, and the rules are applied exactly as printed:

* LRP-epsilon (Eq. 3): ``R_j = sum_k a_j w_jk / (z_k + sign(z_k) eps) R_k``, ``z_k = sum_j a_j w_jk + b_k``;
* LRP-zB (Alg. 10): ``R_j = sum_k (a_j w_jk - l_j w+_jk - h_j w-_jk) / (z_k + sign(z_k) eps) R_k``
  with ``z_k = sum_j (a_j w_jk - l_j w+_jk - h_j w-_jk)``;
* LRP-z+: ``R_j = sum_k (a_j+ w_jk+ + a_j- w_jk-) / (z_k + sign(z_k) eps) R_k`` with
  ``z_k = sum_j (a_j+ w_jk+ + a_j- w_jk-) + b_k+``;
* max pooling: winner takes all, summed over the windows an input wins (Alg. 8).
"""

import numpy as np
import torch


def dense_matrix(fn, in_shape):
    """Matrix M (out_dim x in_dim) of a bias-free linear map ``fn`` on inputs of shape ``in_shape``."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    with torch.no_grad():
        columns = fn(basis).reshape(n, -1)
    return columns.T.numpy().copy()


def sign(z):
    return np.where(z >= 0, 1.0, -1.0)


def divide(R, z, eps):
    """R / (z + sign(z) eps), with 0/0 = 0 for LRP-0."""
    if eps > 0:
        return R / (z + eps * sign(z))
    return np.divide(R, z, out=np.zeros_like(R), where=z != 0)


def epsilon_rule(a, W, b, R, eps):
    z = W @ a + b
    return a * (W.T @ divide(R, z, eps))


def zplus_rule(a, W, b, R, eps):
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    ap, an = np.maximum(a, 0), np.minimum(a, 0)
    z = Wp @ ap + Wn @ an + np.maximum(b, 0)
    s = divide(R, z, eps)
    return ap * (Wp.T @ s) + an * (Wn.T @ s)


def zb_rule(a, W, low, high, R, eps):
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    z = W @ a - Wp @ low - Wn @ high
    s = divide(R, z, eps)
    return a * (W.T @ s) - low * (Wp.T @ s) - high * (Wn.T @ s)


def max_pool_winners(x, kernel, stride, padding):
    """For input (C, H, W): list over outputs (flattened C, Ho, Wo order) of the flat input index that wins."""
    C, H, W = x.shape
    Ho = (H + 2 * padding - kernel) // stride + 1
    Wo = (W + 2 * padding - kernel) // stride + 1
    winners = []
    for c in range(C):
        for i in range(Ho):
            for j in range(Wo):
                best, best_index = -np.inf, None
                for di in range(kernel):
                    for dj in range(kernel):
                        r, q = i * stride - padding + di, j * stride - padding + dj
                        if 0 <= r < H and 0 <= q < W and x[c, r, q] > best:
                            best, best_index = x[c, r, q], (c * H + r) * W + q
                winners.append(best_index)
    return np.array(winners)


def winner_takes_all(winners, R, in_dim):
    out = np.zeros(in_dim)
    np.add.at(out, winners, R)
    return out
