"""Independent NumPy transcriptions of the ERSM equations, loop by loop.

Written for clarity, not speed, straight from ../shared/ERSM.md, so that the
vectorised keras.ops implementation is checked against something that shares
none of its tricks (box sums, parity classes, shifted views).
"""

import numpy as np

NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def tokens(x, p):
    b, h, w, c = x.shape
    t = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return t.reshape(b, h // p, w // p, p * p * c)


def normalised_tokens(x, p):
    t = tokens(x, p).astype(np.float64)
    return t / (np.linalg.norm(t, axis=-1, keepdims=True) + 1e-6)


def scores(x, kernel, bias, p):
    return normalised_tokens(x, p) @ kernel.reshape(-1).astype(np.float64) + bias


def softplus(v):
    return np.logaddexp(0.0, v)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def neighbour_similarity(x, p):
    n = normalised_tokens(x, p)
    b, gh, gw, _ = n.shape
    s = np.zeros((b, gh, gw))
    for i in range(gh):
        for j in range(gw):
            for dy, dx in NEIGHBOURS:
                if 0 <= i + dy < gh and 0 <= j + dx < gw:
                    s[:, i, j] += np.sum(n[:, i, j] * n[:, i + dy, j + dx], -1)
    return s


def neighbour_weights(x, p, kind):
    """Dense (B, h, w, 8) weights w_ij, zero off the grid."""
    n = normalised_tokens(x, p)
    b, gh, gw, _ = n.shape
    weights = np.zeros((b, gh, gw, len(NEIGHBOURS)))
    for i in range(gh):
        for j in range(gw):
            for k, (dy, dx) in enumerate(NEIGHBOURS):
                if 0 <= i + dy < gh and 0 <= j + dx < gw:
                    if kind == "uniform":
                        weights[:, i, j, k] = 1.0
                    else:
                        dot = np.sum(n[:, i, j] * n[:, i + dy, j + dx], -1)
                        weights[:, i, j, k] = np.maximum(dot, 0.0)
    return weights


def neighbour_values(grid):
    """(B, h, w, 8): the value of each neighbour, zero off the grid."""
    b, gh, gw = grid.shape
    out = np.zeros((b, gh, gw, len(NEIGHBOURS)))
    for i in range(gh):
        for j in range(gw):
            for k, (dy, dx) in enumerate(NEIGHBOURS):
                if 0 <= i + dy < gh and 0 <= j + dx < gw:
                    out[:, i, j, k] = grid[:, i + dy, j + dx]
    return out


def coherent_mask(z, weights, coupling, temperature, steps, damping):
    """Mean-field sweeps, updating one (row, column) parity class at a time."""
    m = sigmoid(-z / temperature)
    gh, gw = z.shape[1:]
    for _ in range(steps):
        for parity in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            field = np.sum(weights * (1.0 - 2.0 * neighbour_values(m)), -1)
            target = sigmoid((-z - coupling * field) / temperature)
            selected = np.zeros((gh, gw))
            selected[parity[0]::2, parity[1]::2] = 1.0
            m = m + damping * selected * (target - m)
    return m


def reference_layer(x, kernel, bias, p, unary, pairwise, temperature):
    z = scores(x, kernel, bias, p)
    keep = sigmoid(-z / temperature)
    energy = unary * softplus(z) + pairwise * softplus(neighbour_similarity(x, p))
    return z, keep, energy, np.mean(keep * energy)


def coherent_layer(x, kernel, bias, p, unary, pairwise, temperature,
                   coupling, steps, damping, kind):
    z = scores(x, kernel, bias, p)
    weights = neighbour_weights(x, p, kind)
    m = coherent_mask(z, weights, coupling, temperature, steps, damping)
    disagreement = 0.5 * np.sum(
        weights * (m[..., None] - neighbour_values(m)) ** 2, -1
    )
    energy = unary * softplus(z) + pairwise * disagreement
    loss = np.mean(m * unary * softplus(z) + pairwise * disagreement)
    return z, m, energy, loss


def coherent_gated_layer(x, kernel, bias, p, unary, pairwise, temperature,
                         coupling, steps, kind, noise=None):
    """The coherent field with hard-concrete gates: each gate's score is the
    token's score in the field of its neighbours' final marginals."""
    z = scores(x, kernel, bias, p)
    weights = neighbour_weights(x, p, kind)
    m = coherent_mask(z, weights, coupling, temperature, steps, 1.0)
    field = np.sum(weights * (1.0 - 2.0 * neighbour_values(m)), -1)
    mask, keep = gate_and_keep(z + coupling * field, temperature,
                               "hard_concrete", noise)
    disagreement = 0.5 * np.sum(
        weights * (keep[..., None] - neighbour_values(keep)) ** 2, -1
    )
    energy = unary * softplus(z) + pairwise * disagreement
    loss = np.mean(keep * unary * softplus(z) + pairwise * disagreement)
    return z, keep, mask, energy, loss


def apply_mask(x, mask, p):
    return x * np.repeat(np.repeat(mask, p, axis=1), p, axis=2)[..., None]


STRETCH = (-0.1, 1.1)


def neighbour_count(gh, gw):
    """|N8(i)| per grid position, counted one neighbour at a time."""
    count = np.zeros((gh, gw))
    for i in range(gh):
        for j in range(gw):
            for dy, dx in NEIGHBOURS:
                count[i, j] += 0 <= i + dy < gh and 0 <= j + dx < gw
    return count


def gate_and_keep(z, temperature, gate, noise):
    """The applied gate and the probability that it is non-zero."""
    if gate == "sigmoid":
        keep = sigmoid(-z / temperature)
        return keep, keep
    low, high = STRETCH
    # P(g > 0) = P(stretched sigmoid > 0): the relaxed gate exceeds
    # -low / (high - low), i.e. L > z + T logit(-low / (high - low)).
    threshold = -low / (high - low)
    keep = sigmoid(-(z + temperature * np.log(threshold / (1 - threshold))))
    if noise is None:
        return (z < 0).astype(np.float64), keep
    relaxed = sigmoid((noise - z) / temperature)
    return np.clip(relaxed * (high - low) + low, 0.0, 1.0), keep


def keeping_cost_layer(x, kernel, bias, p, unary, pairwise, temperature,
                       gate="sigmoid", noise=None):
    z = scores(x, kernel, bias, p)
    mask, keep = gate_and_keep(z, temperature, gate, noise)
    count = neighbour_count(*z.shape[1:])
    redundancy = neighbour_similarity(x, p) / np.maximum(count, 1.0)
    energy = unary + pairwise * redundancy
    return z, keep, mask, energy, np.mean(keep * energy)


def mask_mass_multiplier(mask, eps=1e-3):
    """m_i N / (sum_j m_j + eps N), one image at a time."""
    out = np.zeros_like(mask, dtype=np.float64)
    for b in range(mask.shape[0]):
        n = mask[b].size
        out[b] = mask[b] * n / (mask[b].sum() + eps * n)
    return out
