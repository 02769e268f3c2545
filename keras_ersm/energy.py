"""The ERSM energy math as pure `keras.ops` functions.

Everything here is stateless and backend-agnostic: no layers, no variables, no
TensorFlow. Feature maps are channels-last. A map of shape (B, H, W, C) with
patch size p is viewed as a 6-D "patch view" (B, H/p, p, W/p, p, C): a token
(one p x p patch) is indexed by axes 1 and 3, its C*p*p values by axes 2, 4
and 5. Every per-token quantity lives on the token grid (B, H/p, W/p).

Both formulations share the score of a token:

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

import functools
import math
import operator

import keras
from keras import ops

from keras_ersm import autodiff
from keras_ersm.xla import compiled
from keras_ersm.xla import fusion_barrier
from keras_ersm.xla import slices_are_copied

NORM_EPSILON = 1e-6

FORMULATIONS = ("reference", "coherent", "keeping_cost")
GATES = ("sigmoid", "hard_concrete")
OUTPUT_SCALINGS = ("none", "mask_mass")

# The hard-concrete gate's stretch interval (gamma', zeta), as Louizos et al.
HARD_CONCRETE_STRETCH = (-0.1, 1.1)
# The default eps of the "mask_mass" output scaling: small, so that pooling
# after the layer is the mean of the kept tokens; an image whose mask is all
# 0 is scaled by 1 / eps, not divided by 0.
MASK_MASS_EPSILON = 1e-3

# The four "forward" 8-neighbour offsets; each unordered pair appears once.
FORWARD_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))


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
    duplicated into every consumer, compiling for tens of seconds into code
    tens of times slower than the rest of the layer.
    """
    neighbours = ops.conv(
        values[..., None], ops.cast(neighbour_taps(), values.dtype),
        padding="same",
    )
    return ops.sum(stencil * neighbours, axis=-1)


def mean_field_target(unary, affinities, mask, coupling, temperature,
                      stencil=None):
    """sigmoid((-u_i - beta sum_j w_ij (1 - 2 m_j)) / T), the update target."""
    if stencil is None:
        stencil = neighbour_stencil(affinities)
    field = stencil_weighted_sum(stencil, 1.0 - 2.0 * mask)
    return ops.sigmoid((-unary - coupling * field) / temperature)


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


# ---------------------------------------------------------------------------
# The fast path used by `energy_mask`.
#
# Only two things in the layer touch the C-wide feature map: the per-token
# statistics (squared norm, projection on the score kernel and, when the
# pairwise term needs them, the dot products with the four forward
# neighbours) and the final multiplication by the mask. Everything else lives
# on the (B, H/p, W/p) token grid and is cheap. The layer's gradient is
# written by hand for the C-wide part (`keras.ops.custom_gradient`) and
# leaves only the grid math to the backend's autodiff (`autodiff.vjp`):
#
# * forward: the statistics are read off batched Gram matrices of pixel rows
#   (matrix products read the map at full speed; one multiply-and-reduce
#   pass per statistic was 3-4x slower), then `x * mask`;
# * backward: two fused passes over the map, the mask gradient
#   (`_mask_gradient`) and the input gradient (`_input_gradient`: masking
#   and statistics together, neighbours gathered rather than padded), and
#   nothing C-wide saved besides the input, nothing C-wide allocated besides
#   the input gradient.
#
# On TensorFlow the fused passes and the grid math are XLA-compiled
# (`keras_ersm.xla.compiled`) and the matrix products are plain ops; inside
# an XLA-compiled step all of it is traced into that step. Measured in
# BENCHMARKS.md.
# ---------------------------------------------------------------------------

# Squared norms below this are treated as zero-norm tokens: the norm's
# gradient is 0 there (as in the authors' PyTorch code) instead of NaN.
SQUARED_NORM_FLOOR = 1e-30


def _token_view(x, patch_size):
    """A (B, H, W, C) map as its tokens: p = 1 keeps the 4-D map itself;
    p > 1 uses the 6-D patch view."""
    if patch_size == 1:
        return x
    return patch_view(x, patch_size)


def _grid_to_view(grid, patch_size):
    """Make a token-grid tensor broadcast over `_token_view`."""
    if patch_size == 1:
        return grid[:, :, :, None]
    return broadcast_to_patches(grid)


def _kernel_to_view(kernel, patch_size):
    if patch_size == 1:
        return ops.reshape(kernel, (-1,))
    return kernel[None, None, :, None, :, :]


def _neighbour_windows(x, patch_size):
    """`window(d)`: the patch view of `x` with token i replaced by token i + d.

    Where i + d is off the grid the window holds some other (finite) token
    of `x`: callers multiply it by a coefficient that is 0 there (so a
    non-finite value in `x` can also reach the gradient of a token at the
    grid's edge; such a step is non-finite either way). A gather
    at clamped indices of the flattened map, not a zero-padded copy: XLA
    fuses the gathers into the loop that consumes them, where it wrote the
    padded map out (1.3 maps of extra memory and a pass over them).
    """
    shape = ops.shape(x)
    width, channels = shape[2], shape[3]
    pixels = ops.reshape(x, (-1, channels))
    count = ops.shape(pixels)[0]
    positions = ops.arange(count)

    def window(offset):
        step = (offset[0] * width + offset[1]) * patch_size
        index = ops.clip(positions + step, 0, count - 1)
        neighbours = ops.reshape(ops.take(pixels, index, axis=0), shape)
        return _token_view(neighbours, patch_size)

    return window


def _pixel_rows(x):
    """(B, H, W, C) -> (B * H, W, C): the map as rows of pixels."""
    shape = ops.shape(x)
    return ops.reshape(x, (-1, shape[2], shape[3]))


# Pixels per block of a row in the Gram matrices (see `_block_width`).
MAX_BLOCK_WIDTH = 16


def _block_width(width, patch_size):
    """How many pixels of a row share one Gram matrix.

    The Gram matrix of a block of K pixels computes K products per pixel,
    of which 5 are needed (its norm and 4 neighbours): whole rows of 56
    pixels would spend 11x the necessary arithmetic. Blocks are the largest
    divisor of W that is a multiple of p, between 4p and `MAX_BLOCK_WIDTH`;
    whole rows when W is at most that, has no such divisor, or is not known
    when the graph is traced.
    """
    if not isinstance(width, int) or width <= MAX_BLOCK_WIDTH:
        return width
    for block in range(MAX_BLOCK_WIDTH, 4 * patch_size - 1, -1):
        if width % block == 0 and block % patch_size == 0:
            return block
    return width


# Maps of at most this many pixels (8x8) take all their products from one
# Gram matrix per image (see `_image_diagonals`).
MAX_IMAGE_GRAM_PIXELS = 64


def _image_diagonals(x, patch_size):
    """`_row_diagonals` of every pixel with itself, the pixel p to its
    right, and the pixels p below at column offsets -p, 0, p, for a small
    map: all from one Gram matrix per image.

    Returns five (B * H, W) tensors, zero where the partner is off the
    image. The Gram matrix of H * W pixels computes H * W products per
    pixel where the row Gram matrices compute 2 W, but it reads the map
    where it lies: no copy of the rows below (which XLA writes), one
    matrix product instead of two. Up to 8x8 it is also the faster one
    (7x7x2048: 3.1 vs 3.7 ms plain, 6.1 vs 6.7 ms under XLA; 10x10x1024
    plain: 4.6 vs 3.4 ms).
    """
    shape = ops.shape(x)
    height, width, channels = shape[1], shape[2], shape[3]
    p = patch_size
    pixels = ops.reshape(x, (-1, height * width, channels))
    below = p * width
    diagonals = _row_diagonals(
        pixels, pixels, (0, p, below - p, below, below + p), height * width
    )
    # Offsets along the flattened image also pair a pixel near one side
    # of a row with a pixel near the other side of the next row.
    column = ops.arange(width)
    has_left = ops.cast(column >= p, x.dtype)
    has_right = ops.cast(column < width - p, x.dtype)
    masks = (1.0, has_right, has_left, 1.0, has_right)
    return [
        ops.reshape(values, (-1, width)) * mask
        for values, mask in zip(diagonals, masks)
    ]


def _row_diagonals(rows, other_rows, offsets, block):
    """Dot products of pixels in two stacks of rows, at column offsets.

    Returns one (R, W) tensor per offset `k`:
    `d_k[r, i] = rows[r, i] . other_rows[r, i + k]`, 0 where `i + k` is off
    the row or in another block of `block` pixels (`_across_blocks` adds
    those). All come from one batched Gram matrix per block,
    `rows @ other_rows^T`: a matrix multiplication reads the map once at full
    speed, where separate multiply-and-reduce passes (one per offset) are
    several times slower on CPU, with or without XLA.
    """
    width, channels = ops.shape(rows)[1], ops.shape(rows)[2]
    rows = ops.reshape(rows, (-1, block, channels))
    other_rows = ops.reshape(other_rows, (-1, block, channels))
    gram = ops.einsum("rwc,rvc->rwv", rows, other_rows)
    # Zero columns on both sides make every diagonal exactly K long, with
    # zeros off the block (and keep the offsets valid for K <= |k|).
    reach = max(abs(k) for k in offsets)
    gram = ops.pad(gram, [(0, 0), (0, 0), (reach, reach)])
    return [
        ops.reshape(
            ops.diagonal(gram, offset=k + reach, axis1=1, axis2=2),
            (-1, width),
        )
        for k in offsets
    ]


def _diagonals_below(rows, patch_size, block):
    """`_row_diagonals` of every pixel row y with row y + p, offsets -p, 0, p.

    Returns three (R, W) tensors; the last p rows, which have no row p
    below them, hold zeros. Where slices are views (TensorFlow's kernels)
    the two stacks are `rows[:-p]` and `rows[p:]`. Where slices feeding a
    matrix product are copied (XLA), that would write two maps; instead
    the rows are paired with one shifted copy, `rows[p:]` followed by p
    zero rows: one map written instead of two (whole-step XLA on CPU,
    14x14x1024: 24 MiB less peak memory and 12% less time).
    """
    p = patch_size
    offsets = (-p, 0, p)
    # Cut to the row count: with no rows (an empty batch) the padding
    # alone would add p.
    count = ops.shape(rows)[0]
    if slices_are_copied():
        shifted = ops.pad(rows[p:], [(0, p), (0, 0), (0, 0)])[:count]
        return _row_diagonals(rows, shifted, offsets, block)
    return [
        ops.pad(values, [(0, p), (0, 0)])[:count]
        for values in _row_diagonals(rows[:-p], rows[p:], offsets, block)
    ]


# The widest reduction XLA's CPU compiler reduces as it computes its operand.
CHANNEL_CHUNK = 32


def _channel_dots(a, b):
    """`sum(a * b, axis=-1)`, summed over chunks of `CHANNEL_CHUNK` channels.

    XLA's CPU compiler splits a reduction over more than 32 values into a
    `reduce-window` and a reduce (for accuracy) and writes the reduced
    operand, here the C-wide products, out first; a reduction over 32
    values it computes as it multiplies. 28x28x512 under whole-step XLA:
    the three products of `_across_blocks` were 7% of a map at the layer's
    peak. The chunks need their channel count when the graph is traced.
    """
    channels = a.shape[-1]
    if not isinstance(channels, int):
        return ops.sum(a * b, axis=-1)
    chunks = [
        ops.sum(
            a[..., start:start + CHANNEL_CHUNK]
            * b[..., start:start + CHANNEL_CHUNK],
            axis=-1,
        )
        for start in range(0, channels, CHANNEL_CHUNK)
    ]
    return functools.reduce(operator.add, chunks)


def _across_blocks(x, patch_size, block):
    """The products `_row_diagonals` leaves out: pairs in adjacent blocks.

    Returns `(right, below_left, below_right)` as (B * H, W) additions to
    the corresponding diagonals, each at the pixel of the pair that is in
    the upper row (left pixel for `right`). Only the p pixels at either end
    of a block take part: a 2p / K fraction of the (float32) map `x`.
    """
    shape = ops.shape(x)
    height, width, channels = shape[1], shape[2], shape[3]
    p = patch_size
    blocks = ops.reshape(x, (-1, height, width // block, block, channels))
    last = blocks[:, :, :-1, block - p:]  # the last p pixels of block b
    first = blocks[:, :, 1:, :p]  # the first p pixels of block b + 1
    right = _channel_dots(last, first)
    # Pixel rows y and y + p (within an image).
    below_right = _channel_dots(last[:, :-p], first[:, p:])
    below_left = _channel_dots(first[:, :-p], last[:, p:])

    def place(values, at_block_end):
        rows = (0, height - ops.shape(values)[1])
        if at_block_end:  # block b, its last p pixels
            blocks_padding, pixels_padding = (0, 1), (block - p, 0)
        else:  # block b + 1, its first p pixels
            blocks_padding, pixels_padding = (1, 0), (0, block - p)
        values = ops.pad(
            values, [(0, 0), rows, blocks_padding, pixels_padding]
        )
        return ops.reshape(values, (-1, width))

    return (
        place(right, True),
        place(below_left, False),
        place(below_right, True),
    )


def _is_small(height, width):
    """Whether a map of known size takes `_image_diagonals`."""
    return (isinstance(height, int) and isinstance(width, int)
            and height * width <= MAX_IMAGE_GRAM_PIXELS)


def _pixels_to_tokens(values, height, patch_size):
    """Sum per-pixel values (B * H, W) over each token: (B, H/p, W/p)."""
    width = ops.shape(values)[1]
    if patch_size == 1:
        return ops.reshape(values, (-1, height, width))
    grid = ops.reshape(
        values,
        (-1, height // patch_size, patch_size, width // patch_size, patch_size),
    )
    return ops.sum(grid, axis=(2, 4))


def _own_slot(patch_size):
    """(p, p, p, p) float32: 1 where a pixel's (row, column) in its patch is
    the kernel slot (row, column)."""
    eye = ops.eye(patch_size, dtype="float32")
    return eye[:, None, :, None] * eye[None, :, None, :]


def _token_projections(x, kernel, patch_size):
    """`w . x_i` per token: (B, H/p, W/p)."""
    shape = ops.shape(x)
    height, width, channels = shape[1], shape[2], shape[3]
    p = patch_size
    pixels = ops.reshape(
        ops.cast(x, "float32"), (shape[0], height * width, channels)
    )
    slots = ops.transpose(ops.reshape(kernel, (p * p, channels)))
    # Every pixel against every kernel slot (p * p columns: cheap), then
    # each pixel keeps the slot of its position inside its patch.
    products = ops.matmul(pixels, slots)
    products = ops.reshape(
        products, (-1, height // p, p, width // p, p, p, p)
    )
    return ops.einsum("bhywxkl,yxkl->bhw", products, _own_slot(p))


def _kernel_gradient(x, d_projections, patch_size):
    """The gradient of `_token_projections` with respect to the kernel
    (`x` a float32 map).

    A matrix product (pixels^T times per-pixel, per-slot upstream): XLA's
    CPU code for the equivalent column reduction over all tokens was 15x
    slower than the rest of the backward pass.
    """
    batch, height, width, channels = ops.shape(x)
    p = patch_size
    per_slot = (
        d_projections[:, :, None, :, None, None, None]
        * _own_slot(p)[None, None, :, None, :, :, :]
    )
    # One product per image, summed: XLA's CPU code runs a single
    # (tokens x C) matrix-vector product up to 10x slower at some shapes.
    per_slot = ops.transpose(
        ops.reshape(per_slot, (batch, height * width, p * p)), (0, 2, 1)
    )
    pixels = ops.reshape(x, (batch, height * width, channels))
    d_kernel = ops.sum(ops.matmul(per_slot, pixels), axis=0)
    return ops.reshape(d_kernel, (p, p, channels))


def _token_dots(a, b, patch_size):
    """`sum over token i of a * b` for two (B, H, W, C) maps: (B, H/p, W/p).

    Per pixel over chunks of channels (`_channel_dots`), so that, compiled
    by XLA, the products are reduced as they are computed; one reduction
    over all C channels (or a plain graph) would first write them out, a
    map-sized temporary.
    """
    pixels = _channel_dots(a, b)
    return _pixels_to_tokens(
        ops.reshape(pixels, (-1, ops.shape(a)[2])), ops.shape(a)[1],
        patch_size,
    )


def _squared_norms(x, *, patch_size):
    """`||x_i||^2` per token, in float32 (XLA-compiled, `_token_dots`)."""
    x = ops.cast(x, "float32")
    return _token_dots(x, x, patch_size)


def _token_statistics_forward(x, kernel, patch_size, pairs):
    height = ops.shape(x)[1]
    p = patch_size
    if not pairs:
        return [
            compiled(_squared_norms, patch_size=p)(x),
            _token_projections(x, kernel, p),
        ]
    # One float32 copy of a reduced-precision map, shared by the products
    # below (each would otherwise cast its own).
    x = ops.cast(x, "float32")
    projections = _token_projections(x, kernel, p)
    width = ops.shape(x)[2]
    # Token (r, c) and its right neighbour pair the pixels of each row at
    # column offset p; its neighbours in the next token row pair pixel rows
    # y and y + p at column offsets -p, 0, p.
    if _is_small(height, width):
        squares, right, *below = _image_diagonals(x, p)
    else:
        rows = _pixel_rows(x)
        block = _block_width(width, p)
        squares, right = _row_diagonals(rows, rows, (0, p), block)
        below = _diagonals_below(rows, p, block)
        # (A width unknown when the graph is traced takes whole rows.)
        if isinstance(width, int) and block != width:
            right_across, below_left_across, below_right_across = compiled(
                _across_blocks, patch_size=p, block=block
            )(x)
            right = right + right_across
            below[0] = below[0] + below_left_across
            below[2] = below[2] + below_right_across
    statistics = [
        _pixels_to_tokens(squares, height, p),
        projections,
        _pixels_to_tokens(right, height, p),
    ]
    for values in below:
        # The last p pixel rows of an image were paired with the next
        # image: the last token row has no neighbours below.
        grid = _pixels_to_tokens(values, height, p)
        statistics.append(ops.pad(grid[:, :-1], [(0, 0), (0, 1), (0, 0)]))
    return statistics


def _input_gradient(x, kernel, mask, d_outputs, *d_statistics, patch_size,
                    pairs, materialise):
    """`(d x, d kernel)` of the layer, in one fused pass over the map.

    `d x = d_outputs * mask` (the masking) plus the vector-Jacobian product
    of `_token_statistics_forward` with `d_statistics`:

        d/dx_i = 2 g_sq[i] x_i + g_proj[i] w
                 + sum_d (g_d[i] x_{i+d} + g_d[i-d] x_{i-d})   (e_d = x_i . x_{i+d})
    """
    x32 = ops.cast(x, "float32")
    view = _token_view(x32, patch_size)
    d_squares, d_projections = d_statistics[0], d_statistics[1]
    # All per-token coefficients are computed on the grid first: the C-wide
    # loop then only multiplies and adds.
    coefficients = [mask, 2.0 * d_squares, d_projections]
    offsets = []
    if pairs:
        # The on-grid indicators are 0 where the neighbour is off the grid
        # (see _neighbour_windows).
        for offset, gradient, on_grid in zip(
            FORWARD_OFFSETS, d_statistics[2:], uniform_affinities(d_squares)
        ):
            backward = (-offset[0], -offset[1])
            coefficients += [gradient * on_grid, shift(gradient, backward)]
            offsets += [offset, backward]
    if materialise:
        # Materialised before they are broadcast over the map (see
        # `fusion_barrier`).
        coefficients = fusion_barrier(*coefficients)
    coefficients = [_grid_to_view(grid, patch_size) for grid in coefficients]
    d_view = _token_view(ops.cast(d_outputs, "float32"), patch_size)
    d_view = d_view * coefficients[0] + coefficients[1] * view
    d_view = d_view + coefficients[2] * _kernel_to_view(kernel, patch_size)
    if pairs:
        window = _neighbour_windows(x32, patch_size)
        for coefficient, offset in zip(coefficients[3:], offsets):
            d_view = d_view + coefficient * window(offset)
    d_x = ops.cast(ops.reshape(d_view, ops.shape(x)), x.dtype)
    return d_x, _kernel_gradient(x32, d_projections, patch_size)


def _mask_gradient(x, d_outputs, *, patch_size):
    """`sum over token i of d_outputs * x`, in float32: (B, H/p, W/p)
    (XLA-compiled, `_token_dots`)."""
    return _token_dots(
        ops.cast(d_outputs, "float32"), ops.cast(x, "float32"), patch_size
    )


def _mask_forward(x, mask, patch_size, materialise=False):
    """Multiply every token of `x` by its float32 mask value, in x's dtype.

    `materialise`: whether, under XLA, to materialise the mask before it is
    broadcast over the map (see `keras_ersm.xla.fusion_barrier`): worth it
    when a long chain of grid code produces it (mean-field sweeps).
    """
    view = _token_view(x, patch_size)
    if materialise:
        (mask,) = fusion_barrier(mask)
    masked = view * ops.cast(_grid_to_view(mask, patch_size), x.dtype)
    return ops.reshape(masked, ops.shape(x))


# The token grids `energy_mask` reports, in order. `token_energy` returns
# them, then the per-token multiplier of the map (the mask, scaled by
# `output_scaling`), then the loss.
GRID_KEYS = ("score", "keep", "energy", "mask")


def _upstream_list(args, upstream):
    """Normalise a custom-gradient upstream across backends to a list."""
    if upstream is None:
        upstream = args
    if len(upstream) == 1 and isinstance(upstream[0], (list, tuple)):
        upstream = upstream[0]
    return list(upstream)


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


def token_energy(
    bias,
    *statistics,
    formulation,
    unary_weight,
    pairwise_weight,
    temperature,
    coupling,
    mean_field_steps,
    damping,
    neighbour_weights,
    gate="sigmoid",
    output_scaling="none",
    mask_mass_epsilon=MASK_MASS_EPSILON,
    noise=None,
):
    """The energy math on the token grid, from the token statistics.

    `noise`: the hard-concrete gate's logistic noise on the token grid
    (training), or None (the deterministic gate).

    Returns:
        A flat tuple (so that backends can differentiate it): the float32
        token grids named by `GRID_KEYS`, the multiplier of the map, then
        the loss, as described in `energy_mask`.
    """
    statistics = list(statistics)
    pairs = len(statistics) > 2
    norms = ops.sqrt(ops.maximum(statistics[0], SQUARED_NORM_FLOOR))
    inverse_norms = 1.0 / (norms + NORM_EPSILON)
    # Zero-norm tokens (all values exactly 0, e.g. dead ReLUs): the direction
    # x^ = x / (n + eps) of a zero vector is undefined. Differentiating the
    # formula literally (as PyTorch does) gives d z / d x = w / eps, ~1e6 |w|,
    # an artefact of eps: it overflows float16 when cast back to the input
    # dtype (and would collapse a dynamic loss scale), and no optimiser step
    # is small enough for that linearisation to mean anything. We define the
    # gradient through the normalised features of a zero-norm token as 0, the
    # same subgradient convention as the norm's (`SQUARED_NORM_FLOOR`), in
    # every dtype. Forward values are unchanged (the projection and the dot
    # products of a zero token are exactly 0); only exactly-zero tokens are
    # affected, so the float32 parity fixture (no zero tokens) is unchanged.
    live = statistics[0] >= SQUARED_NORM_FLOOR
    statistics[1] = ops.where(live, statistics[1], 0.0)
    if pairs:
        for index, offset in enumerate(FORWARD_OFFSETS, start=2):
            both_live = ops.logical_and(live, shift(live, offset))
            statistics[index] = ops.where(both_live, statistics[index], 0.0)
    scores = statistics[1] * inverse_norms + bias
    if gate == "hard_concrete":
        keep = hard_concrete_keep(scores, temperature)
        gated = hard_concrete_gate(scores, temperature, noise)
    else:
        keep = ops.sigmoid(-scores / temperature)
        gated = keep
    unary_energy = unary_weight * ops.softplus(scores)
    # Cosine similarity of each forward pair, stored at its first token.
    cosines = [
        dots * inverse_norms * shift(inverse_norms, offset)
        for dots, offset in zip(statistics[2:], FORWARD_OFFSETS)
    ]

    if formulation == "reference":
        similarity = summed_similarity(scores, cosines)
        energy = unary_energy + pairwise_weight * ops.softplus(similarity)
        mask = gated
        loss = _token_mean(keep * energy)
    elif formulation == "keeping_cost":
        redundancy = summed_similarity(scores, cosines) / ops.maximum(
            neighbour_counts(scores), 1.0
        )
        energy = unary_weight + pairwise_weight * redundancy
        mask = gated
        loss = _token_mean(keep * energy)
    else:
        if neighbour_weights == "affinity":
            affinities = [ops.relu(cosine) for cosine in cosines]
        else:
            affinities = uniform_affinities(scores)
        mask = mean_field(
            scores,
            affinities,
            ops.sigmoid(-scores / temperature),
            coupling=coupling,
            temperature=temperature,
            steps=mean_field_steps,
            damping=damping,
        )
        if gate == "hard_concrete":
            field_scores = scores + coupling * stencil_weighted_sum(
                neighbour_stencil(affinities), 1.0 - 2.0 * mask
            )
            keep = hard_concrete_keep(field_scores, temperature)
            mask = hard_concrete_gate(field_scores, temperature, noise)
            marginals = keep
        else:
            marginals = mask
        disagreement = pairwise_weight * pairwise_disagreement(
            affinities, marginals
        )
        energy = unary_energy + disagreement
        loss = _token_mean(marginals * unary_energy + disagreement)
    if output_scaling == "mask_mass":
        multiplier = mask_mass_scaling(mask, mask_mass_epsilon)
    else:
        multiplier = mask
    return scores, keep, energy, mask, multiplier, loss


def _noisy_token_energy(bias, noise, *statistics, **hyperparameters):
    """`token_energy` with the gate's noise as a positional argument."""
    return token_energy(bias, *statistics, noise=noise, **hyperparameters)


def energy_mask(
    x,
    kernel,
    bias,
    *,
    patch_size,
    formulation,
    unary_weight,
    pairwise_weight,
    temperature,
    coupling=0.0,
    mean_field_steps=0,
    damping=1.0,
    neighbour_weights="uniform",
    gate="sigmoid",
    output_scaling="none",
    mask_mass_epsilon=MASK_MASS_EPSILON,
    noise=None,
):
    """Apply an energy mask to a channels-last feature map.

    Touches the C-wide map only through the token statistics and the
    masking (see the fast path above); the cosine similarities come from the raw neighbour dot
    products as `x^_i . x^_j = (x_i . x_j) / ((n_i + eps)(n_j + eps))`.

    On TensorFlow, the token-grid math (`token_energy`) and the two fused
    backward passes run XLA-compiled (`keras_ersm.xla.compiled`); the
    statistics themselves (matrix multiplications) and the multiplication by
    the mask stay ordinary ops, which TensorFlow's CPU kernels run faster than
    XLA's CPU code does. Inside an XLA-compiled step everything is traced into
    that step. Backends other than TensorFlow and JAX differentiate the
    forward ops directly. On GPUs with TensorFloat-32 (which TensorFlow
    enables by default for float32 matrix products and convolutions), the
    statistics may carry TF32's ~1e-3 relative rounding, and so may the
    coherent formulation's neighbour sums (`stencil_weighted_sum`) and, in
    an XLA-compiled step, its `fusion_barrier` (convolutions by one-hot
    kernels); not measured, as no GPU was available (`benchmarks/
    gpu_check.py` measures it);
    `tf.config.experimental.enable_tensor_float_32_execution(False)`
    restores full float32.

    Args:
        x: (B, H, W, C) feature map of any float dtype; H and W divisible by
            `patch_size`.
        kernel: (p, p, C) float32 score weights.
        bias: float32 scalar or (H/p, W/p) per-position bias.
        patch_size, formulation, unary_weight, pairwise_weight, temperature,
        coupling, mean_field_steps, damping, neighbour_weights, gate,
        output_scaling, mask_mass_epsilon: as the `EnergyMask` layer's
        arguments.
        noise: `None`, or the hard-concrete gate's noise on the token grid,
            (B, H/p, W/p) float32 (`logistic_noise`): a training call.

    Returns:
        `(outputs, grids, loss)`: the masked map in the dtype of `x`; a dict
        of float32 token grids `score`, `keep`, `energy`, `mask`; the float32
        scalar regularisation loss (before `energy_loss_weight`).
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"Unknown formulation: {formulation!r}")
    kernel = ops.cast(ops.convert_to_tensor(kernel), "float32")
    bias = ops.cast(ops.convert_to_tensor(bias), "float32")
    pairs = (
        formulation == "reference"
        or (formulation == "keeping_cost" and pairwise_weight > 0)
        or (formulation == "coherent" and neighbour_weights == "affinity")
    )
    # Under XLA, the mean-field sweeps (and their gradient) would otherwise
    # be fused into, and recomputed by, the C-wide loops; for the reference
    # formulation's short grid code the barrier costs more than it saves
    # (whole-step XLA, 14x14x1024: 47 vs 36 ms; coherent: 38 vs 94 ms).
    materialise = formulation == "coherent" and mean_field_steps > 0
    hyperparameters = dict(
        formulation=formulation,
        unary_weight=unary_weight,
        pairwise_weight=pairwise_weight,
        temperature=temperature,
        coupling=coupling,
        mean_field_steps=mean_field_steps,
        damping=damping,
        neighbour_weights=neighbour_weights,
        gate=gate,
        output_scaling=output_scaling,
        mask_mass_epsilon=mask_mass_epsilon,
    )
    # XLA's CPU code runs the mean-field sweeps' long chain of tiny grid ops
    # slower than TensorFlow's kernels do (32x28x28 grid, 3 sweeps,
    # forward+backward: 14.5 vs 9.8 ms); inside an XLA-compiled step they
    # are traced into it anyway.
    wrap = functools.partial if materialise else compiled
    if noise is None:
        grid_energy = wrap(token_energy, **hyperparameters)
    else:
        # Its own compiled function (one signature per function), with the
        # noise a constant of the gradient: bound, not differentiated.
        noisy = wrap(_noisy_token_energy, **hyperparameters)
        noise = ops.cast(noise, "float32")

        def grid_energy(bias, *statistics):
            return noisy(bias, noise, *statistics)

    def forward(x, kernel, bias):
        statistics = _token_statistics_forward(x, kernel, patch_size, pairs)
        *grids, loss = grid_energy(bias, *statistics)
        outputs = _mask_forward(x, grids[-1], patch_size, materialise)
        return outputs, statistics, grids, loss

    def grid_result(outputs, grids, loss):
        # The last grid, the map's multiplier, is internal.
        return outputs, dict(zip(GRID_KEYS, grids[:-1])), loss

    if keras.backend.backend() not in autodiff.BACKENDS:
        outputs, _, grids, loss = forward(x, kernel, bias)
        return grid_result(outputs, grids, loss)

    @ops.custom_gradient
    def layer(x, kernel, bias):
        outputs, statistics, grids, loss = forward(x, kernel, bias)

        def grad(*args, upstream=None):
            d_outputs, *d_grids, d_loss = [
                ops.zeros_like(value) if cotangent is None else cotangent
                for value, cotangent in zip(
                    (outputs, *grids, loss), _upstream_list(args, upstream)
                )
            ]
            d_grids[-1] = d_grids[-1] + compiled(
                _mask_gradient, patch_size=patch_size
            )(x, d_outputs)
            # The token-grid math is recomputed (cheap) under the backend's
            # autodiff; everything C-wide is differentiated by hand.
            _, pullback = autodiff.vjp(grid_energy, bias, *statistics)
            d_bias, *d_statistics = pullback(*d_grids, d_loss)
            d_x, d_kernel = compiled(
                _input_gradient,
                patch_size=patch_size,
                pairs=pairs,
                materialise=materialise,
            )(x, kernel, grids[-1], d_outputs, *d_statistics)
            return d_x, d_kernel, d_bias

        return (outputs, *grids, loss), grad

    outputs, *grids, loss = layer(x, kernel, bias)
    return grid_result(outputs, grids, loss)
