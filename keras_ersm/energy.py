"""The ERSM energy math as pure `keras.ops` functions.

Everything here is stateless and backend-agnostic: no layers, no variables, no
TensorFlow. Feature maps are channels-last. A map of shape (B, H, W, C) with
patch size p is viewed as a 6-D "patch view" (B, H/p, p, W/p, p, C): a token
(one p x p patch) is indexed by axes 1 and 3, its C*p*p values by axes 2, 4
and 5. Every per-token quantity lives on the token grid (B, H/p, W/p).
`token_energy` computes everything below from `TokenStatistics`, the few
numbers per token that it reads of the map; `keras_ersm.energy_kernel`
computes those statistics, masks the map and differentiates the C-wide part
by hand.

All formulations share the score of a token:

    n_i   = ||x_i||_2
    x^_i  = x_i / (n_i + eps)                  eps = 1e-6, as the authors
    z_i   = w . x^_i + b_i                     the cost of keeping token i

"reference", the authors' layer:

    keep_i   = sigmoid(-z_i / T)
    s_i      = sum_{j in N8(i)} x^_i . x^_j    neighbours off the grid add 0
    energy_i = lambda softplus(z_i) + gamma softplus(s_i)
    mask_i   = keep_i
    loss     = mean_i(keep_i * energy_i)

"coherent", a binary pairwise random field on the token grid,

    E(m) = sum_i m_i u_i + beta sum_{i~j} w_ij (m_i - m_j)^2,    u_i = z_i,

over 8-connected pairs, with w_ij = 1 ("uniform") or the clipped cosine
similarity max(0, x^_i . x^_j) ("affinity"). Its mean-field free energy

    F(m) = sum_i m_i u_i + beta sum_{i~j} w_ij (m_i + m_j - 2 m_i m_j)
           - T sum_i H(m_i)

(the expectation of E under independent Bernoulli(m_i), minus T times their
entropy) is minimised from m = keep by the damped updates

    m_i <- (1 - eta) m_i + eta sigmoid((-u_i - beta sum_j w_ij (1 - 2 m_j)) / T).

Tokens (i, j) with the same parity of (row, column) are never 8-neighbours,
so each sweep updates the four parity classes in turn: every update is an
exact (eta = 1) or partial (eta < 1) minimisation of the convex restriction of
F to that class, so F never increases. Then

    mask_i   = m_i after `steps` sweeps
    energy_i = lambda softplus(z_i) + gamma 1/2 sum_j w_ij (m_i - m_j)^2
    loss     = mean_i(lambda m_i softplus(z_i)
                      + gamma 1/2 sum_j w_ij (m_i - m_j)^2).

"keeping_cost", a cost of keeping a token that does not vanish as its keep
value goes to 1 (the reference's softplus(z_i) does), so that the task loss
and the cost meet at an interior optimum:

    r_i      = s_i / |N8(i)|                  mean cosine to in-grid neighbours
    energy_i = lambda + gamma r_i
    mask_i   = keep_i
    loss     = mean_i(keep_i * energy_i).

Gates. "sigmoid" (above) is deterministic. "hard_concrete" (Louizos et al.,
2018, "Learning Sparse Neural Networks through L0 Regularization") makes the
mask a stochastic gate that is exactly 0 or 1 with non-zero probability,
with log alpha_i = -z_i and T its temperature (beta there); for "coherent",
z_i is the token's score in the field of its neighbours' mean-field
marginals, z_i + beta sum_j w_ij (1 - 2 m_j), whose gate is open with the
probability of the marginal m_i (up to the stretch), so that a token's
neighbours decide with it, and the loss takes keep_i for m_i:

    training:  g_i = clip(sigmoid((L_i - z_i) / T) (zeta - gamma') + gamma', 0, 1),
               L_i ~ Logistic(0, 1), (gamma', zeta) = HARD_CONCRETE_STRETCH
    inference: g_i = 1 if z_i < 0 else 0      (the gate's median, rounded)
    keep_i   = P(g_i > 0) = sigmoid(-z_i - T log(-gamma' / zeta))
    mask_i   = g_i;  the loss keeps its form, mean_i(keep_i * energy_i),
               an expected (energy-weighted) L0 count.

Output scaling. "none": the map is multiplied by the mask. "mask_mass": by
mask_i * N / (sum_j m_j + eps N) over the N tokens of each image, so that a
global average pool after the layer is sum_i m_i x_i / (sum_j m_j + eps N):
with a small eps (MASK_MASS_EPSILON) the mask-weighted mean of the kept
tokens, so that a mask scale common to all tokens cannot be absorbed by the
head and tokens compete within an image; a larger eps moves it towards the
mask-weighted sum, where every token with positive evidence is worth
keeping.
"""

import math
from typing import NamedTuple

import keras
from keras import ops

NORM_EPSILON = 1e-6
# Squared norms below this are treated as zero-norm tokens: the norm's
# gradient is 0 there (as in the authors' PyTorch code) instead of NaN.
SQUARED_NORM_FLOOR = 1e-30

FORMULATIONS = ("reference", "coherent", "keeping_cost")
GATES = ("sigmoid", "hard_concrete")
OUTPUT_SCALINGS = ("none", "mask_mass")
NEIGHBOUR_WEIGHTS = ("uniform", "affinity")

# The hard-concrete gate's stretch interval (gamma', zeta), as Louizos et al.
HARD_CONCRETE_STRETCH = (-0.1, 1.1)
# The default eps of the "mask_mass" output scaling: small, so that pooling
# after the layer is the mean of the kept tokens; an image whose mask is all
# 0 is scaled by 1 / eps, not divided by 0.
MASK_MASS_EPSILON = 1e-3

# The four "forward" 8-neighbour offsets; each unordered pair appears once.
FORWARD_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))

# The token grids the layer reports, in order. `token_energy` returns them,
# then the per-token multiplier of the map (the mask, scaled by
# `output_scaling`), then the loss.
GRID_KEYS = ("score", "keep", "energy", "mask")


class TokenStatistics(NamedTuple):
    """All that the energy reads of the C-wide map, per token (B, H/p, W/p).

    Attributes:
        squared_norms: `||x_i||^2`.
        projections: `w . x_i`, the token against the score kernel.
        neighbour_dots: `x_i . x_{i+d}` for each offset d of
            `FORWARD_OFFSETS`, in that order, 0 where i + d is off the grid;
            empty for formulations that read no neighbours
            (`reads_neighbour_dots`).
    """

    squared_norms: object
    projections: object
    neighbour_dots: tuple = ()


def patch_view(x, patch_size):
    """Reshape (B, H, W, C) into the patch view (B, H/p, p, W/p, p, C).

    Every size is given (no -1): a map whose H or W p does not divide fails
    here instead of being read into a different batch.
    """
    shape = ops.shape(x)
    height, width, channels = shape[1], shape[2], shape[3]
    return ops.reshape(
        x,
        (
            shape[0],
            height // patch_size,
            patch_size,
            width // patch_size,
            patch_size,
            channels,
        ),
    )


def broadcast_to_patches(grid):
    """View a token-grid tensor (B, h, w) so it broadcasts over a patch view."""
    return grid[:, :, None, :, None, None]


def shift(grid, offset):
    """`shift(g, (dy, dx))[:, i, j] = g[:, i + dy, j + dx]`, zero off the grid.

    Acts on axes 1 and 2 (the token grid) of a tensor of rank >= 3.
    """
    rank = len(grid.shape)
    for axis, step in zip((1, 2), offset):
        if step == 0:
            continue
        length = ops.shape(grid)[axis]
        padding = [(0, 0)] * rank
        padding[axis] = (max(-step, 0), max(step, 0))
        padded = ops.pad(grid, padding)
        start = max(step, 0)
        index = [slice(None)] * rank
        index[axis] = slice(start, start + length)
        grid = padded[tuple(index)]
    return grid


def uniform_affinities(grid):
    """w_ij = 1 for every in-grid forward neighbour, as four grids."""
    ones = ops.ones_like(grid)
    return [shift(ones, offset) for offset in FORWARD_OFFSETS]


def neighbour_counts(grid):
    """|N8(i)|, the number of in-grid 8-neighbours of each token."""
    count = ops.zeros_like(grid)
    for on_grid, (dy, dx) in zip(uniform_affinities(grid), FORWARD_OFFSETS):
        count = count + on_grid + shift(on_grid, (-dy, -dx))
    return count


def logistic_noise(shape, seed=None):
    """L = log u - log(1 - u), u ~ U(0, 1): the hard-concrete gate's noise.

    Args:
        shape: the token grid's shape (B, H/p, W/p).
        seed: a `keras.random.SeedGenerator` or int, as `keras.random`.
    """
    tiny = 1e-6
    u = keras.random.uniform(shape, minval=tiny, maxval=1.0 - tiny, seed=seed)
    return ops.log(u) - ops.log1p(-u)


def hard_concrete_gate(scores, temperature, noise=None):
    """The hard-concrete gate g_i: sampled with `noise`, its rounded median
    (exactly 0 or 1) without."""
    if noise is None:
        return ops.cast(scores < 0.0, scores.dtype)
    low, high = HARD_CONCRETE_STRETCH
    relaxed = ops.sigmoid((noise - scores) / temperature)
    return ops.clip(relaxed * (high - low) + low, 0.0, 1.0)


def hard_concrete_keep(scores, temperature):
    """P(g_i > 0), the probability that a hard-concrete gate keeps token i."""
    low, high = HARD_CONCRETE_STRETCH
    return ops.sigmoid(-scores - temperature * math.log(-low / high))


def mask_mass_scaling(mask, epsilon=MASK_MASS_EPSILON):
    """mask_i * N / (sum_j m_j + eps N) per image: the "mask_mass" output
    scaling."""
    count = ops.cast(ops.shape(mask)[1] * ops.shape(mask)[2], mask.dtype)
    mass = ops.sum(mask, axis=(1, 2), keepdims=True)
    return mask * count / (mass + epsilon * count)


def pairwise_disagreement(affinities, mask):
    """1/2 sum_j w_ij (m_i - m_j)^2 per token (sums to the pairwise term)."""
    total = ops.zeros_like(mask)
    for weight, offset in zip(affinities, FORWARD_OFFSETS):
        backward = (-offset[0], -offset[1])
        edge = weight * ops.square(mask - shift(mask, offset))
        total = total + 0.5 * (edge + shift(edge, backward))
    return total


def parity_classes(grid):
    """Four float masks over the grid, one per (row % 2, column % 2)."""
    shape = ops.shape(grid)
    rows = ops.arange(shape[1]) % 2
    columns = ops.arange(shape[2]) % 2
    classes = []
    for row_parity in (0, 1):
        for column_parity in (0, 1):
            selected = ops.logical_and(
                ops.equal(rows, row_parity)[:, None],
                ops.equal(columns, column_parity)[None, :],
            )
            classes.append(ops.cast(selected, grid.dtype)[None])
    return classes


# The 8 neighbour offsets, in the order of the channels of `NEIGHBOUR_TAPS`.
NEIGHBOUR_OFFSETS = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


def neighbour_taps():
    """(3, 3, 1, 8) one-hot kernels: `conv(v, taps)[..., k] = v[i + d_k]`.

    A 'same' cross-correlation with zero padding, so neighbours off the grid
    read 0, as `shift` does.
    """
    taps = [[[[0.0] * 8] for _ in range(3)] for _ in range(3)]
    for channel, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        taps[1 + dy][1 + dx][0][channel] = 1.0
    return ops.convert_to_tensor(taps, dtype="float32")


def neighbour_stencil(affinities):
    """(B, h, w, 8) weights w_{i, i+d_k} for the 8 offsets `NEIGHBOUR_OFFSETS`.

    Built once from the 4 forward affinities: the pair (i, i + d) of a
    forward offset d is stored at i, so seen from i + d (offset -d) its
    weight is the backward shift of `affinities[d]`.
    """
    by_offset = {}
    for weight, (dy, dx) in zip(affinities, FORWARD_OFFSETS):
        by_offset[(dy, dx)] = weight
        by_offset[(-dy, -dx)] = shift(weight, (-dy, -dx))
    return ops.stack([by_offset[d] for d in NEIGHBOUR_OFFSETS], axis=-1)


def stencil_weighted_sum(stencil, values):
    """sum_j w_ij values_j from a `neighbour_stencil`, as one convolution.

    One convolution per call instead of 8 pad/slice pairs keeps the
    unrolled mean-field sweeps small: under XLA the chains of fused
    pad/slice/multiply ops of the sweeps (and of their gradients) were
    duplicated into every consumer, slow to compile and to run (see
    BENCHMARKS.md).
    """
    neighbours = ops.conv(
        values[..., None], ops.cast(neighbour_taps(), values.dtype),
        padding="same",
    )
    return ops.sum(stencil * neighbours, axis=-1)


def field_scores(unary, affinities, mask, coupling, stencil=None):
    """u_i + beta sum_j w_ij (1 - 2 m_j): a token's score in the field of its
    neighbours' mask values."""
    if stencil is None:
        stencil = neighbour_stencil(affinities)
    return unary + coupling * stencil_weighted_sum(stencil, 1.0 - 2.0 * mask)


def mean_field_target(unary, affinities, mask, coupling, temperature,
                      stencil=None):
    """sigmoid((-u_i - beta sum_j w_ij (1 - 2 m_j)) / T), the update target."""
    return ops.sigmoid(
        -field_scores(unary, affinities, mask, coupling, stencil) / temperature
    )


def mean_field(unary, affinities, initial_mask, *, coupling, temperature,
               steps, damping):
    """`steps` sweeps of damped mean-field updates, one parity class a time."""
    mask = initial_mask
    if steps == 0:
        return mask
    classes = parity_classes(unary)
    stencil = neighbour_stencil(affinities)
    for _ in range(steps):
        for selected in classes:
            target = mean_field_target(
                unary, affinities, mask, coupling, temperature, stencil
            )
            mask = mask + damping * selected * (target - mask)
    return mask


def mean_field_free_energy(unary, affinities, mask, *, coupling, temperature):
    """F(m) per example: the relaxed energy that `mean_field` decreases."""
    pair_sum = ops.zeros_like(mask)
    for weight, offset in zip(affinities, FORWARD_OFFSETS):
        neighbour = shift(mask, offset)
        pair_sum = pair_sum + weight * (
            mask + neighbour - 2.0 * mask * neighbour
        )
    clipped = ops.clip(mask, 1e-7, 1.0 - 1e-7)
    entropy = -(
        clipped * ops.log(clipped) + (1.0 - clipped) * ops.log(1.0 - clipped)
    )
    per_token = mask * unary + coupling * pair_sum - temperature * entropy
    return ops.sum(per_token, axis=(1, 2))


def mean_field_residual(unary, affinities, mask, *, coupling, temperature):
    """max_i |m_i - target_i|: zero exactly at a mean-field fixed point."""
    target = mean_field_target(unary, affinities, mask, coupling, temperature)
    return ops.max(ops.abs(mask - target))



def reads_neighbour_dots(formulation, pairwise_weight, neighbour_weights):
    """Whether `token_energy` reads `TokenStatistics.neighbour_dots`: the
    cosines of the reference's similarity, of the keeping cost's redundancy
    and of the coherent field's "affinity" weights."""
    return (
        formulation == "reference"
        or (formulation == "keeping_cost" and pairwise_weight > 0)
        or (formulation == "coherent" and neighbour_weights == "affinity")
    )


def live_statistics(statistics):
    """`statistics` with the direction of a zero-norm token taken as 0.

    Zero-norm tokens (all values exactly 0, e.g. dead ReLUs): the direction
    x^ = x / (n + eps) of a zero vector is undefined. Differentiating the
    formula literally (as PyTorch does) gives d z / d x = w / eps, ~1e6 |w|,
    an artefact of eps: it overflows float16 when cast back to the input
    dtype (and would collapse a dynamic loss scale), and no optimiser step
    is small enough for that linearisation to mean anything. We define the
    gradient through the normalised features of a zero-norm token as 0, the
    same subgradient convention as the norm's (`SQUARED_NORM_FLOOR`), in
    every dtype. Forward values are unchanged (the projection and the dot
    products of a zero token are exactly 0); only exactly-zero tokens are
    affected, so the float32 parity fixture (no zero tokens) is unchanged.
    """
    live = statistics.squared_norms >= SQUARED_NORM_FLOOR
    neighbour_dots = tuple(
        ops.where(ops.logical_and(live, shift(live, offset)), dots, 0.0)
        for dots, offset in zip(statistics.neighbour_dots, FORWARD_OFFSETS)
    )
    return TokenStatistics(
        statistics.squared_norms,
        ops.where(live, statistics.projections, 0.0),
        neighbour_dots,
    )


def summed_similarity(grid, cosines):
    """s_i = sum_{j in N8(i)} x^_i . x^_j from the forward pairs' cosines
    (0 everywhere without them)."""
    similarity = ops.zeros_like(grid)
    for cosine, (dy, dx) in zip(cosines, FORWARD_OFFSETS):
        similarity = similarity + cosine + shift(cosine, (-dy, -dx))
    return similarity


def _token_mean(values):
    """The mean over all tokens, 0 for an empty batch (e.g. one replica's
    share of a last, partial batch): `ops.mean` would give NaN."""
    count = ops.cast(ops.size(values), values.dtype)
    return ops.sum(values) / ops.maximum(count, 1.0)


def gates(scores, temperature, gate, noise=None):
    """`(keep, mask)` of the scores z: `keep = sigmoid(-z / T)` and the mask
    `keep` for the "sigmoid" gate; for "hard_concrete", the probability that
    the gate is open and the gate (stochastic with `noise`, 0/1 without)."""
    if gate == "hard_concrete":
        return (hard_concrete_keep(scores, temperature),
                hard_concrete_gate(scores, temperature, noise))
    keep = ops.sigmoid(-scores / temperature)
    return keep, keep


def coherent_energy(scores, cosines, unary_energy, *, pairwise_weight,
                    temperature, coupling, mean_field_steps, damping,
                    neighbour_weights, gate, noise):
    """The "coherent" formulation, from the scores and the pairs' cosines.

    Args:
        scores: z_i, the token grid (B, H/p, W/p).
        cosines: the forward pairs' cosines, as `FORWARD_OFFSETS` (empty
            for "uniform" weights).
        unary_energy: lambda softplus(z_i).
        pairwise_weight, temperature, coupling, mean_field_steps, damping,
        neighbour_weights, gate: as `token_energy`'s.
        noise: the hard-concrete gate's noise, or None.

    Returns:
        `(keep, energy, mask, loss)`.
    """
    if neighbour_weights == "affinity":
        affinities = [ops.relu(cosine) for cosine in cosines]
    else:
        affinities = uniform_affinities(scores)
    keep = ops.sigmoid(-scores / temperature)
    mask = mean_field(
        scores,
        affinities,
        keep,
        coupling=coupling,
        temperature=temperature,
        steps=mean_field_steps,
        damping=damping,
    )
    if gate == "hard_concrete":
        gate_scores = field_scores(scores, affinities, mask, coupling)
        keep, mask = gates(gate_scores, temperature, gate, noise)
        marginals = keep
    else:
        marginals = mask
    disagreement = pairwise_weight * pairwise_disagreement(
        affinities, marginals
    )
    energy = unary_energy + disagreement
    loss = _token_mean(marginals * unary_energy + disagreement)
    return keep, energy, mask, loss


def token_energy(
    bias,
    statistics,
    *,
    formulation,
    unary_weight,
    pairwise_weight,
    temperature,
    coupling,
    mean_field_steps,
    damping,
    neighbour_weights,
    gate,
    output_scaling,
    mask_mass_epsilon,
    noise=None,
):
    """The energy math on the token grid, from the token statistics.

    The cosine similarities come from the raw neighbour dot products as
    `x^_i . x^_j = (x_i . x_j) / ((n_i + eps)(n_j + eps))`.

    Args:
        bias: float32 scalar or (H/p, W/p) per-position score bias b_i.
        statistics: the map's `TokenStatistics`, float32.
        formulation, unary_weight, pairwise_weight, temperature, coupling,
        mean_field_steps, damping, neighbour_weights, gate, output_scaling,
        mask_mass_epsilon: the fields of `keras_ersm.mask_options.MaskOptions`
            (`MaskOptions.token_energy_arguments()`).
        noise: the hard-concrete gate's logistic noise on the token grid
            (training), or None (the deterministic gate).

    Returns:
        A flat tuple (so that backends can differentiate it): the float32
        token grids named by `GRID_KEYS`, the per-token multiplier of the
        map (the mask, scaled by `output_scaling`), then the scalar loss.
    """
    norms = ops.sqrt(ops.maximum(statistics.squared_norms, SQUARED_NORM_FLOOR))
    inverse_norms = 1.0 / (norms + NORM_EPSILON)
    statistics = live_statistics(statistics)
    scores = statistics.projections * inverse_norms + bias
    unary_energy = unary_weight * ops.softplus(scores)
    # Cosine similarity of each forward pair, stored at its first token.
    cosines = [
        dots * inverse_norms * shift(inverse_norms, offset)
        for dots, offset in zip(statistics.neighbour_dots, FORWARD_OFFSETS)
    ]

    if formulation == "coherent":
        # Its gates take their scores from the mean-field solution.
        keep, energy, mask, loss = coherent_energy(
            scores, cosines, unary_energy,
            pairwise_weight=pairwise_weight, temperature=temperature,
            coupling=coupling, mean_field_steps=mean_field_steps,
            damping=damping, neighbour_weights=neighbour_weights, gate=gate,
            noise=noise,
        )
    else:
        keep, mask = gates(scores, temperature, gate, noise)
        if formulation == "reference":
            similarity = summed_similarity(scores, cosines)
            energy = unary_energy + pairwise_weight * ops.softplus(similarity)
        else:
            redundancy = summed_similarity(scores, cosines) / ops.maximum(
                neighbour_counts(scores), 1.0
            )
            energy = unary_weight + pairwise_weight * redundancy
        loss = _token_mean(keep * energy)
    if output_scaling == "mask_mass":
        multiplier = mask_mass_scaling(mask, mask_mass_epsilon)
    else:
        multiplier = mask
    return scores, keep, energy, mask, multiplier, loss
