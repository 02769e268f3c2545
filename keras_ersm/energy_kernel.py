"""The fast path of the `EnergyMask` layer: `apply_energy_mask`.

Only two things in the layer touch the C-wide feature map: the per-token
statistics (`keras_ersm.energy.TokenStatistics`) and the final
multiplication by the mask. Everything else lives on the (B, H/p, W/p)
token grid and is cheap (`keras_ersm.energy.token_energy`). The layer's
gradient is written by hand for the C-wide part (`keras.ops.custom_gradient`)
and leaves only the grid math to the backend's autodiff (`autodiff.vjp`):

* forward: the statistics are read off batched Gram matrices of pixel rows
  (a matrix product reads the map at full speed, where one
  multiply-and-reduce pass per statistic is several times slower), then
  `x * mask`;
* backward: two fused passes over the map, the mask gradient
  (`_mask_gradient`) and the input gradient (`_input_gradient`: masking
  and statistics together, neighbours gathered rather than padded), and
  nothing C-wide saved besides the input, nothing C-wide allocated besides
  the input gradient.

On TensorFlow the fused passes and the grid math are XLA-compiled
(`keras_ersm.xla.compiled`) and the matrix products are plain ops; inside
an XLA-compiled step all of it is traced into that step. Why each piece is
shaped as it is was measured; see BENCHMARKS.md.
"""

import functools
import operator
from typing import Callable
from typing import NamedTuple

import keras
from keras import ops

from keras_ersm import autodiff
from keras_ersm.energy import FORWARD_OFFSETS
from keras_ersm.energy import GRID_KEYS
from keras_ersm.energy import TokenStatistics
from keras_ersm.energy import broadcast_to_patches
from keras_ersm.energy import patch_view
from keras_ersm.energy import reads_neighbour_dots
from keras_ersm.energy import shift
from keras_ersm.energy import token_energy
from keras_ersm.energy import uniform_affinities
from keras_ersm.xla import compiled
from keras_ersm.xla import differentiating_forward
from keras_ersm.xla import fusion_barrier
from keras_ersm.xla import slices_are_copied


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
    """Make the (p, p, C) score kernel broadcast over `_token_view`."""
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
    matrix product instead of two. Up to 8x8 pixels it is also the faster
    one, beyond that the row Gram matrices are (see BENCHMARKS.md).
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
    zero rows: one map written instead of two, which lowers the peak
    memory and the time of a whole-step XLA step on CPU (see BENCHMARKS.md).
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
    values it computes as it multiplies, so that under whole-step XLA the
    products of `_across_blocks` are not held at the layer's peak (see
    BENCHMARKS.md). The chunks need their channel count when the graph is
    traced.
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
    CPU code for the equivalent column reduction over all tokens took most
    of the backward pass (see BENCHMARKS.md).
    """
    batch, height, width, channels = ops.shape(x)
    p = patch_size
    per_slot = (
        d_projections[:, :, None, :, None, None, None]
        * _own_slot(p)[None, None, :, None, :, :, :]
    )
    # One product per image, summed: XLA's CPU code runs a single
    # (tokens x C) matrix-vector product much slower at some shapes.
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
    """The map's `TokenStatistics`, in float32, from Gram matrices of pixels.

    Args:
        x: (B, H, W, C) feature map of any float dtype.
        kernel: (p, p, C) float32 score kernel.
        patch_size: p.
        pairs: whether to compute `neighbour_dots` (else left empty).

    Returns:
        A `TokenStatistics` of (B, H/p, W/p) grids.
    """
    height = ops.shape(x)[1]
    p = patch_size
    if not pairs:
        return TokenStatistics(
            compiled(_squared_norms, patch_size=p)(x),
            _token_projections(x, kernel, p),
        )
    # One float32 copy of a reduced-precision map, shared by the products
    # below (each would otherwise cast its own).
    x = ops.cast(x, "float32")
    projections = _token_projections(x, kernel, p)
    width = ops.shape(x)[2]
    # Token (r, c) and its right neighbour pair the pixels of each row at
    # column offset p; its neighbours in the next token row pair pixel rows
    # y and y + p at column offsets -p, 0, p.
    if _is_small(height, width):
        squares, right, below_left, below, below_right = _image_diagonals(
            x, p
        )
    else:
        rows = _pixel_rows(x)
        block = _block_width(width, p)
        squares, right = _row_diagonals(rows, rows, (0, p), block)
        below_left, below, below_right = _diagonals_below(rows, p, block)
        # (A width unknown when the graph is traced takes whole rows.)
        if isinstance(width, int) and block != width:
            right_across, below_left_across, below_right_across = compiled(
                _across_blocks, patch_size=p, block=block
            )(x)
            right = right + right_across
            below_left = below_left + below_left_across
            below_right = below_right + below_right_across
    squared_norms = _pixels_to_tokens(squares, height, p)
    # In the order of `FORWARD_OFFSETS`: (0, 1), (1, -1), (1, 0), (1, 1).
    neighbour_dots = [_pixels_to_tokens(right, height, p)]
    for values in (below_left, below, below_right):
        # The last p pixel rows of an image were paired with the next
        # image: the last token row has no neighbours below.
        grid = _pixels_to_tokens(values, height, p)
        neighbour_dots.append(ops.pad(grid[:, :-1], [(0, 0), (0, 1), (0, 0)]))
    return TokenStatistics(squared_norms, projections, tuple(neighbour_dots))


def _input_gradient(x, kernel, mask, d_outputs, d_statistics, *, patch_size,
                    materialise):
    """`(d x, d kernel)` of the layer, in one fused pass over the map.

    `d x = d_outputs * mask` (the masking) plus the vector-Jacobian product
    of `_token_statistics_forward` with `d_statistics`:

        d/dx_i = 2 g_sq[i] x_i + g_proj[i] w
                 + sum_d (g_d[i] x_{i+d} + g_d[i-d] x_{i-d})   (e_d = x_i . x_{i+d})

    Args:
        x: the layer's (B, H, W, C) input.
        kernel: (p, p, C) float32 score kernel.
        mask: the float32 multiplier of the map on the token grid.
        d_outputs: the upstream gradient of the masked map.
        d_statistics: the upstream gradient of the `TokenStatistics`.
        patch_size: p.
        materialise: whether to pass the per-token coefficients through
            `fusion_barrier` (see `_mask_forward`).

    Returns:
        `(d_x, d_kernel)`, in the dtypes of `x` and float32.
    """
    x32 = ops.cast(x, "float32")
    view = _token_view(x32, patch_size)
    d_squares = d_statistics.squared_norms
    d_projections = d_statistics.projections
    # All per-token coefficients are computed on the grid first: the C-wide
    # loop then only multiplies and adds.
    coefficients = [mask, 2.0 * d_squares, d_projections]
    offsets = []
    if d_statistics.neighbour_dots:
        # The on-grid indicators are 0 where the neighbour is off the grid
        # (see _neighbour_windows).
        for offset, gradient, on_grid in zip(
            FORWARD_OFFSETS, d_statistics.neighbour_dots,
            uniform_affinities(d_squares),
        ):
            backward = (-offset[0], -offset[1])
            coefficients += [gradient * on_grid, shift(gradient, backward)]
            offsets += [offset, backward]
    if materialise:
        # Materialised before they are broadcast over the map (see
        # `fusion_barrier`).
        coefficients = fusion_barrier(*coefficients)
    coefficients = [_grid_to_view(grid, patch_size) for grid in coefficients]
    mask_view, self_weight, kernel_weight, *neighbour_weights = coefficients
    d_view = _token_view(ops.cast(d_outputs, "float32"), patch_size)
    d_view = d_view * mask_view + self_weight * view
    d_view = d_view + kernel_weight * _kernel_to_view(kernel, patch_size)
    if offsets:
        window = _neighbour_windows(x32, patch_size)
        for coefficient, offset in zip(neighbour_weights, offsets):
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


def _upstream_list(args, upstream):
    """Normalise a custom-gradient upstream across backends to a list."""
    if upstream is None:
        upstream = args
    if len(upstream) == 1 and isinstance(upstream[0], (list, tuple)):
        upstream = upstream[0]
    return list(upstream)


def _noisy_token_energy(bias, statistics, noise, **hyperparameters):
    """`token_energy` with the gate's noise as a positional argument."""
    return token_energy(bias, statistics, noise=noise, **hyperparameters)


def _grid_energy(noise, materialise, **hyperparameters):
    """`token_energy` as a function of `(bias, statistics)`, compiled where
    that pays.

    XLA's CPU code runs the mean-field sweeps' long chain of tiny grid ops
    slower than TensorFlow's kernels do (see BENCHMARKS.md), so the grid
    math of `materialise`d (mean-field) layers stays plain ops; inside an
    XLA-compiled step it is traced into the step anyway.
    """
    wrap = functools.partial if materialise else compiled
    if noise is None:
        return wrap(token_energy, **hyperparameters)
    # Its own compiled function (one signature per function), with the
    # noise a constant of the gradient: bound, not differentiated.
    noisy = wrap(_noisy_token_energy, **hyperparameters)
    noise = ops.cast(noise, "float32")
    return lambda bias, statistics: noisy(bias, statistics, noise)


class _CallPlan(NamedTuple):
    """What one call of `apply_energy_mask` fixes before it runs.

    Attributes:
        patch_size: int, side of a token in feature-map positions.
        pairs: bool, whether the energy reads the neighbours' dot products
            (`reads_neighbour_dots`).
        materialise: bool, whether the grid code's results are
            materialised before they are broadcast over the map (see
            `_mask_forward`).
        grid_energy: `(bias, statistics) -> (*grids, loss)`, the energy on
            the token grid (`_grid_energy`); the last grid is the map's
            multiplier.
    """

    patch_size: int
    pairs: bool
    materialise: bool
    grid_energy: Callable


def _call_plan(options, noise):
    """The `_CallPlan` of `options` and the gate's `noise` (or `None`)."""
    # Under XLA, the mean-field sweeps (and their gradient) would otherwise
    # be fused into, and recomputed by, the C-wide loops; for the reference
    # formulation's short grid code the barrier costs more than it saves
    # (see BENCHMARKS.md).
    materialise = (options.formulation == "coherent"
                   and options.mean_field_steps > 0)
    return _CallPlan(
        patch_size=options.patch_size,
        pairs=reads_neighbour_dots(options.formulation,
                                   options.pairwise_weight,
                                   options.neighbour_weights),
        materialise=materialise,
        grid_energy=_grid_energy(
            noise, materialise, **options.token_energy_arguments()
        ),
    )


def _forward(plan, x, kernel, bias):
    """`(outputs, statistics, grids, loss)`: the masked map, the map's
    `TokenStatistics`, the token grids (the last, the map's multiplier)
    and the loss."""
    statistics = _token_statistics_forward(x, kernel, plan.patch_size,
                                           plan.pairs)
    *grids, loss = plan.grid_energy(bias, statistics)
    outputs = _mask_forward(x, grids[-1], plan.patch_size, plan.materialise)
    return outputs, statistics, grids, loss


def _backward(plan, x, kernel, bias, statistics, grids, cotangents):
    """`(d_x, d_kernel, d_bias)` from the cotangents of `_forward`'s
    `(outputs, *grids, loss)`."""
    d_outputs, *d_grids, d_loss = cotangents
    d_grids[-1] = d_grids[-1] + compiled(
        _mask_gradient, patch_size=plan.patch_size
    )(x, d_outputs)
    # The token-grid math is recomputed (cheap) under the backend's
    # autodiff; everything C-wide is differentiated by hand.
    _, pullback = autodiff.vjp(plan.grid_energy, bias, statistics)
    d_bias, d_statistics = pullback(*d_grids, d_loss)
    d_x, d_kernel = compiled(
        _input_gradient,
        patch_size=plan.patch_size,
        materialise=plan.materialise,
    )(x, kernel, grids[-1], d_outputs, d_statistics)
    return d_x, d_kernel, d_bias


def _with_hand_written_gradient(plan):
    """`(x, kernel, bias) -> (outputs, *grids, loss)`, `_forward` with
    `_backward` as its gradient."""

    @ops.custom_gradient
    def masked(x, kernel, bias):
        outputs, statistics, grids, loss = _forward(plan, x, kernel, bias)

        def gradient(*args, upstream=None):
            cotangents = [
                ops.zeros_like(value) if cotangent is None else cotangent
                for value, cotangent in zip(
                    (outputs, *grids, loss), _upstream_list(args, upstream)
                )
            ]
            return _backward(plan, x, kernel, bias, statistics, grids,
                             cotangents)

        return (outputs, *grids, loss), gradient

    return masked


def apply_energy_mask(x, kernel, bias, options, noise=None):
    """Apply an energy mask to a channels-last feature map.

    Touches the C-wide map only through the token statistics and the
    masking; the energy on the token grid is `energy.token_energy`.

    On TensorFlow, the token-grid math and the two fused backward passes
    run XLA-compiled (`keras_ersm.xla.compiled`); the statistics themselves
    (matrix multiplications) and the multiplication by the mask stay
    ordinary ops, which TensorFlow's CPU kernels run faster than XLA's CPU
    code does. Inside an XLA-compiled step everything is traced into that
    step. Backends other than TensorFlow and JAX differentiate the forward
    ops directly, and so does a graph traced by `keras_ersm.export`
    (`xla.serving_trace(differentiate_forward=True)`): a gradient taken
    through a SavedModel (a saliency map, say) is TensorFlow's of those
    ops, the same numbers. On GPUs with TensorFloat-32 (which TensorFlow
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
        options: the `keras_ersm.mask_options.MaskOptions` of the energy.
        noise: `None`, or the hard-concrete gate's noise on the token grid,
            (B, H/p, W/p) float32 (`energy.logistic_noise`): a training
            call.

    Returns:
        `(outputs, grids, loss)`: the masked map in the dtype of `x`; a dict
        of float32 token grids `score`, `keep`, `energy`, `mask`; the float32
        scalar regularisation loss (before `energy_loss_weight`).
    """
    kernel = ops.cast(ops.convert_to_tensor(kernel), "float32")
    bias = ops.cast(ops.convert_to_tensor(bias), "float32")
    plan = _call_plan(options, noise)
    if (keras.backend.backend() in autodiff.BACKENDS
            and not differentiating_forward()):
        outputs, *grids, loss = _with_hand_written_gradient(plan)(
            x, kernel, bias
        )
    else:
        outputs, _, grids, loss = _forward(plan, x, kernel, bias)
    # The last grid, the map's multiplier, is internal.
    return outputs, dict(zip(GRID_KEYS, grids[:-1])), loss
