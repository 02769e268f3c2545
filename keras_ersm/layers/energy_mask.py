"""The EnergyMask layer."""

import keras
from keras import ops

from keras_ersm import compat
from keras_ersm import energy
from keras_ersm import energy_kernel
from keras_ersm import fields
from keras_ersm import presets
from keras_ersm import validation
from keras_ersm import xla
from keras_ersm.initializers import DEFAULT_INITIAL_KEEP
from keras_ersm.initializers import initial_keep_bias
from keras_ersm.mask_options import MaskOptions

# Where `save_own_variables` keeps the hard-concrete gates' noise state.
_NOISE_STATE = "noise_state"


@keras.saving.register_keras_serializable(package="keras_ersm")
class KeptFraction(keras.metrics.Mean):
    """Mean of a 0/1 tensor that reads NaN, not 0, before any update.

    A 0 would be indistinguishable from "every token dropped" when updates
    were never recorded.

    Its `total` and `count` are state of the layer that owns it (listed in
    the layer's `variables`, not in the metric's): JAX's stateless `fit`,
    `evaluate` and `predict` pass a model's trainable and non-trainable
    variables through the forward pass, where the layer updates the
    metric, but not its metrics' variables (keras-team/keras#21639). So on
    JAX the counts are carried from step to step with the model's state,
    and `fit`'s epoch logs and `evaluate`'s results, read once the state is
    back in the variables, are exact. Inside a JAX step, where the counts
    are not mapped, the result reads NaN (the per-batch logs of a progress
    bar or callback).
    """

    @property
    def variables(self):
        # The owning layer's state; see the class docstring.
        return []

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def result(self):
        scope = compat.current_stateless_scope()
        if scope is not None and scope.get_current_value(self.count) is None:
            return ops.convert_to_tensor(float("nan"), self.dtype)
        return ops.where(self.count > 0, super().result(), float("nan"))


def _initializer(caller, argument, value, default):
    """`keras.initializers.get(value)`, `default` for None."""
    try:
        return keras.initializers.get(default if value is None else value)
    except (ValueError, TypeError):
        raise validation.invalid(
            caller, argument, "None, a Keras initializer, its name (such as "
            "'zeros') or its config dict", value,
        ) from None


@keras.saving.register_keras_serializable(package="keras_ersm")
class EnergyMask(keras.layers.Layer):
    """Energy-Regularized Spatial Masking (ERSM) of a feature map.

    Splits a channels-last feature map into non-overlapping
    `patch_size` x `patch_size` tokens, gives every token a score
    `z = w . x^ + b` of its L2-normalised features `x^`, turns the scores
    into a differentiable mask, multiplies each token by its mask value and
    adds an energy regularisation loss, so that the network learns how much
    of each input to keep.

    Three formulations:

    * `"reference"`: the authors' layer (arXiv 2604.06893),
      `keep = sigmoid(-z / T)`, energy
      `unary_weight * softplus(z) + pairwise_weight * softplus(s)` with `s`
      the summed cosine similarity of a token to its 8 neighbours, mask
      `keep`, loss `mean(keep * energy)`. The pairwise term depends on the
      features only: it penalises keeping redundant tokens but does not make
      neighbouring mask values agree.
    * `"coherent"`: a binary pairwise random field over the token grid,
      `E(m) = sum_i m_i z_i + coupling * sum_{i~j} w_ij (m_i - m_j)^2`
      (8-connected, `w_ij` 1 or the clipped cosine similarity of the two
      tokens), minimised inside the forward pass by `mean_field_steps`
      sweeps of damped mean-field updates
      `m_i <- (1 - damping) m_i + damping *
      sigmoid((-z_i - coupling * sum_j w_ij (1 - 2 m_j)) / T)`
      started from `keep`. Each sweep updates the four (row, column) parity
      classes in turn, which never raises the mean-field free energy. The
      mask is the final `m`; the energy is
      `unary_weight * softplus(z) + pairwise_weight * 1/2 sum_j w_ij (m_i - m_j)^2`
      and the loss `mean(m * unary + pairwise)`.
    * `"keeping_cost"`: every kept token costs
      `unary_weight + pairwise_weight * r` with `r` the mean cosine
      similarity of a token to its in-grid 8 neighbours (no border bias),
      loss `mean(keep * energy)`. Unlike the reference's `softplus(z)`, the
      cost does not vanish as a token's keep value goes to 1.

    With `gate="hard_concrete"` the mask is a hard-concrete (L0) gate
    (Louizos et al., 2018): stochastic in training, with `log alpha = -z`
    and `temperature` its beta (2/3 in the paper), exactly 0 or 1 at
    inference (1 where `z < 0`); `keep` is the probability that the gate is
    non-zero. For `"coherent"`, `z` is then the token's score in the field
    of its neighbours' mean-field marginals,
    `z_i + coupling * sum_j w_ij (1 - 2 m_j)`, so that similar neighbours
    open and close together, and `keep` replaces `m` in the loss.

    With `output_scaling="mask_mass"` the map is multiplied by
    `mask * N / (sum(mask) + mask_mass_epsilon * N)` per image, so that a
    global average pool after the layer is the mask-weighted mean of the
    kept tokens: a scale common to the whole mask cannot be absorbed by the
    head, and tokens compete within each image. A larger
    `mask_mass_epsilon` moves the pool towards the mask-weighted sum.

    See `keras_ersm.energy` for the equations in full.

    The defaults are the mask that learns (`"keeping_cost"`, hard-concrete
    gates, `"mask_mass"` scaling; docs/mask_learning.md). The authors' layer
    is `EnergyMask.from_preset("authors")`, and as their code trains it
    `EnergyMask.from_preset("authors_dynamics")` (`keras_ersm.presets`).
    Differences from the authors' code, on purpose: the bias is trainable
    (theirs is created after the optimiser captured the parameters and never
    trains), it is one scalar by default (theirs is per grid position, which
    ties the layer to one input resolution; `position_bias=True` restores
    it), and it starts where 95% of every token is kept (theirs starts at
    +6: 0.25% kept).

    Mixed precision follows `LayerNormalization`: weights and the energy math
    are float32, the output is in the compute dtype, the loss is in
    `keras.config.floatx()` (float32, also under mixed precision; float64
    if set so, to add up with the model's compiled loss).
    On the TensorFlow backend the token-grid math and the backward passes
    over the map run as XLA-compiled kernels, also in a model compiled
    without `jit_compile` (the matrix products, the masking and the coherent
    formulation's mean-field sweeps stay TensorFlow ops; see
    `keras_ersm.xla` and `keras_ersm.energy_kernel`).

    The energy's hyperparameters, the arguments below from `patch_size` to
    `mask_mass_epsilon`, are read back as `layer.options`, a
    `keras_ersm.mask_options.MaskOptions`.

    Args:
{options}
        position_bias: bool. False (default): one scalar `score_bias`.
            True: a `position_bias` of shape (H/p, W/p), as the authors;
            needs static H and W.
        seed: int or None, seeds the hard-concrete gate's noise.
        score_kernel_initializer: initializer of `score_kernel`; zeros by
            default (and for None), so every token starts with the same
            score.
        score_bias_initializer: initializer of the bias; None (default) for
            `-temperature * logit(0.95)`, where every token starts with
            keep 0.95 (`keras_ersm.initializers.initial_keep_bias`).
        score_bias_trainable: bool, whether the bias trains (True by
            default). The authors' bias never does; see
            `keras_ersm.presets.AUTHORS_DYNAMICS`.
        track_kept_fraction: bool, whether calls update the layer's
            `kept_fraction` metric (the fraction of tokens with mask > 0.5),
            reported by `fit` and `evaluate` as `<layer name>_kept_fraction`.
            Every call updates it, also `predict` or `model(x)` during an
            epoch; `fit` resets it at each epoch, `evaluate` at its start.
            On the JAX backend `fit` and `evaluate` cannot record it
            (keras-team/keras#21639): it reads NaN there; use `explain`.
        data_format: `None` or `"channels_last"`. The layer masks
            channels-last maps; `None` takes
            `keras.config.image_data_format()` and refuses "channels_first"
            when the layer is built (Keras's image layers would then make
            channels-first maps). Pass `"channels_last"` for channels-last
            maps under a global "channels_first" setting.
        **kwargs: base `Layer` arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: float tensor (batch, height, width, channels).
        training: bool, whether a hard-concrete gate samples its noise.

    Returns:
        The masked feature map, same shape as `inputs`, in the compute dtype.

    Example:

    >>> import numpy as np
    >>> inputs = keras.Input((8, 8, 32))
    >>> masked = EnergyMask(patch_size=2, name="mask")(inputs)
    >>> outputs = keras.layers.GlobalAveragePooling2D()(masked)
    >>> model = keras.Model(inputs, outputs)
    >>> tuple(model(np.ones((2, 8, 8, 32))).shape)
    (2, 32)
    >>> EnergyMask.from_preset("authors").formulation
    'reference'
    """

    # The energy's options, with `MaskOptions`' defaults (a test checks that
    # they agree), so that the signature shows them.
    def __init__(
        self,
        *,
        patch_size=1,
        formulation="keeping_cost",
        unary_weight=1e-2,
        pairwise_weight=1e-2,
        temperature=2 / 3,
        energy_loss_weight=1.0,
        mean_field_steps=3,
        coupling=0.5,
        damping=1.0,
        neighbour_weights="uniform",
        gate="hard_concrete",
        output_scaling="mask_mass",
        mask_mass_epsilon=energy.MASK_MASS_EPSILON,
        position_bias=False,
        seed=None,
        score_kernel_initializer="zeros",
        score_bias_initializer=None,
        score_bias_trainable=True,
        track_kept_fraction=True,
        data_format=None,
        **kwargs,
    ):
        arguments = locals()
        options = {name: arguments[name] for name in MaskOptions.names()}
        super().__init__(**kwargs)
        caller = self._owner
        if not keras.backend.is_float_dtype(self.compute_dtype):
            # The masked map would be cast to it (1.6 -> 1).
            raise validation.invalid(
                caller, "dtype", "a floating-point dtype or dtype policy "
                "(it may come from keras.config.set_dtype_policy)",
                self.dtype_policy.name,
            )
        self.options = MaskOptions(**options, caller=caller)
        self.position_bias = validation.check_bool(
            caller, "position_bias", position_bias
        )
        self.seed = validation.check_integer(
            caller, "seed", seed, minimum=0, optional=True
        )
        self.score_bias_trainable = validation.check_bool(
            caller, "score_bias_trainable", score_bias_trainable
        )
        self.track_kept_fraction = validation.check_bool(
            caller, "track_kept_fraction", track_kept_fraction
        )
        self.data_format = validation.check_choice(
            caller, "data_format", data_format, (None, "channels_last")
        )
        self.score_kernel_initializer = _initializer(
            caller, "score_kernel_initializer", score_kernel_initializer,
            "zeros",
        )
        self.score_bias_initializer = _initializer(
            caller, "score_bias_initializer", score_bias_initializer,
            initial_keep_bias(DEFAULT_INITIAL_KEEP, self.options.temperature),
        )
        # Under mixed precision the weights are read in float32, never cast.
        self.autocast = False
        self.kept_fraction = KeptFraction(name=f"{self.name}_kept_fraction")
        if self.options.gate == "hard_concrete":
            self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def _owner(self):
        # Every message names the layer, the argument and its domain.
        return f"EnergyMask '{self.name}'"

    def _invalid_input(self, expected, input_shape, hint=None):
        return validation.invalid(
            self._owner, "inputs", expected,
            received=f"shape {tuple(input_shape)}", hint=hint,
        )

    def _check_input_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise self._invalid_input(
                "of rank 4 (batch, height, width, channels)", input_shape
            )
        _, height, width, channels = input_shape
        if channels is None:
            raise self._invalid_input("of known channels", input_shape)
        if 0 in (height, width):
            raise self._invalid_input("of height and width >= 1", input_shape)
        validation.check_divides(self._owner, self.options.patch_size,
                                 height, width, "the input")
        if self.position_bias and (height is None or width is None):
            raise self._invalid_input(
                "of static height and width with position_bias=True",
                input_shape,
                hint="Use position_bias=False for inputs of any size.",
            )
        return input_shape

    def build(self, input_shape):
        data_format = self.data_format or keras.config.image_data_format()
        if data_format != "channels_last":
            # Keras's image layers would make (batch, channels, height,
            # width) maps, which this layer would mask along the wrong axes.
            raise validation.invalid(
                self._owner, "data_format", "'channels_last', or None with "
                "keras.config.image_data_format() 'channels_last'",
                received=f"None with {data_format!r}",
                hint="The layer masks channels-last (batch, height, width, "
                "channels) maps: pass data_format='channels_last' if they "
                "are, or call keras.config.set_image_data_format("
                "'channels_last') before building the model.",
            )
        _, height, width, channels = self._check_input_shape(input_shape)
        self.score_kernel = self.add_weight(
            name="score_kernel",
            shape=(self.options.patch_size,) * 2 + (channels,),
            initializer=self.score_kernel_initializer,
            dtype="float32",
            autocast=False,
        )
        if self.position_bias:
            self.score_bias = self.add_weight(
                name="position_bias",
                shape=self._token_grid(height, width),
                initializer=self.score_bias_initializer,
                dtype="float32",
                autocast=False,
                trainable=self.score_bias_trainable,
            )
        else:
            self.score_bias = self.add_weight(
                name="score_bias",
                shape=(),
                initializer=self.score_bias_initializer,
                dtype="float32",
                autocast=False,
                trainable=self.score_bias_trainable,
            )

    def _token_grid(self, height, width):
        """(rows, columns) of tokens of a map of `height` x `width`."""
        patch_size = self.options.patch_size
        return (height // patch_size, width // patch_size)

    def _check_float(self, dtype):
        if "float" not in keras.backend.standardize_dtype(dtype):
            raise validation.invalid(
                self._owner, "inputs", "a floating-point tensor",
                received=f"dtype {dtype}",
            )

    def _check_built_shape(self, input_shape):
        """A call after `build` must match the weights built for it."""
        _, height, width, channels = self._check_input_shape(input_shape)
        built_channels = self.score_kernel.shape[-1]
        if channels != built_channels:
            raise self._invalid_input(
                f"of {built_channels} channels, as when the layer was built",
                input_shape,
            )
        if self.position_bias:
            built_grid = tuple(self.score_bias.shape)
            if self._token_grid(height, width) != built_grid:
                raise self._invalid_input(
                    f"of the token grid {built_grid} that the layer was "
                    "built for (position_bias=True)", input_shape,
                    hint="Use position_bias=False for inputs of any size.",
                )

    def _apply(self, inputs, training=False):
        self._check_float(inputs.dtype)
        self._check_built_shape(inputs.shape)
        patch_size = self.options.patch_size
        if None in tuple(inputs.shape)[1:3]:
            # `check_divides`'s message, with the shape the graph sees
            # appended (no quotes: TensorFlow's message would escape them).
            inputs = xla.checked_divisible(
                inputs, patch_size,
                f"EnergyMask layer {self.name}: argument `patch_size` must be "
                f"{validation.divides_expected('the input')}; received "
                f"{patch_size} for an input of shape",
                f"EnergyMask_{self.name}_patch_size_{patch_size}_"
                "must_divide_the_input_height_and_width",
            )
        noise = None
        if training and self.options.gate == "hard_concrete":
            shape = ops.shape(inputs)
            noise = energy.logistic_noise(
                (shape[0], *self._token_grid(shape[1], shape[2])),
                seed=self.seed_generator,
            )
        return energy_kernel.apply_energy_mask(
            inputs, self.score_kernel, self.score_bias, self.options,
            noise=noise,
        )

    def call(self, inputs, training=None):
        outputs, grids, loss = self._apply(inputs, training)
        if self.options.energy_loss_weight:
            # In floatx, the dtype of the compiled loss it is added to:
            # float32 under mixed precision, float64 if a user sets that.
            self.add_loss(
                ops.cast(loss, keras.config.floatx())
                * self.options.energy_loss_weight
            )
        if (self.track_kept_fraction and not xla.tracing_for_serving()
                and self._can_update_kept_fraction()):
            self.kept_fraction.update_state(
                ops.cast(grids["mask"] > 0.5, "float32")
            )
        return ops.cast(outputs, self.compute_dtype)

    @property
    def metrics(self):
        # Without tracking the metric is never updated: `fit` would log NaN.
        return super().metrics if self.track_kept_fraction else []

    @property
    def variables(self):
        # The kept-fraction counts are non-trainable state of the layer, so
        # that JAX's stateless `fit` and `evaluate` carry their updates (see
        # `KeptFraction`); `weights` (and so saving) leave them out.
        return super().variables + [
            self.kept_fraction.total, self.kept_fraction.count
        ]

    def _can_update_kept_fraction(self):
        # A stateless call (JAX) that does not map the counts, such as
        # Keras's symbolic shape inference, could neither read nor keep an
        # update: it is skipped. `fit`, `evaluate` and `predict` map them
        # (`variables` lists them), as do TensorFlow and eager calls.
        scope = compat.current_stateless_scope()
        return scope is None or scope.get_current_value(
            self.kept_fraction.count
        ) is not None

    def explain(self, inputs):
        """The layer's token-grid quantities for `inputs`.

        Args:
            inputs: float tensor (batch, height, width, channels).

        Returns:
            A dict of float32 tensors of shape
            (batch, height / patch_size, width / patch_size): `score` (z),
            `keep` (sigmoid(-z / T); with hard-concrete gates the
            probability that the gate is open), `energy` (per-token energy)
            and `mask` (the mask the layer applies, at inference: `keep`
            for "reference" and "keeping_cost" with sigmoid gates, the
            mean-field solution for "coherent" with sigmoid gates, the 0/1
            gates with hard-concrete ones).
        """
        if isinstance(inputs, keras.KerasTensor):
            raise validation.invalid(
                self._owner, "inputs", "a concrete tensor (`explain`)",
                received="a symbolic KerasTensor",
                hint="For a model that outputs the masks, use "
                "keras_ersm.mask_model(model).",
            )
        inputs = ops.convert_to_tensor(inputs)
        if not self.built:
            self.build(inputs.shape)
        else:
            self._check_input_shape(inputs.shape)
        _, grids, _ = self._apply(inputs)
        return grids

    def compute_output_shape(self, input_shape):
        return tuple(self._check_input_shape(input_shape))

    def compute_output_spec(self, inputs):
        self._check_float(inputs.dtype)
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.options.gate == "hard_concrete":
            # The gates' noise stream is state too (Keras leaves seed
            # generators out of a layer's weights): saved, a run resumed
            # from a backup draws the noise the uninterrupted run draws.
            store[_NOISE_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _NOISE_STATE in keys:
            self.seed_generator.state.assign(store[_NOISE_STATE])
            # Files saved before hold no noise state: the weights alone.
            store = {key: store[key] for key in keys if key != _NOISE_STATE}
        super().load_own_variables(store)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """A layer of the preset `preset` of `keras_ersm.presets`.

        Args:
            preset: "learned" (the defaults), "authors" or
                "authors_dynamics".
            **kwargs: arguments of `EnergyMask` that replace the preset's,
                and base `Layer` arguments (`name`, `dtype`).

        Returns:
            An `EnergyMask`.
        """
        return cls(**presets.mask_kwargs(preset, **kwargs))

    @classmethod
    def from_config(cls, config):
        # A layer saved before an option existed used its default then.
        config = MaskOptions.with_defaults(config)
        try:
            return super().from_config(config)
        except TypeError as error:
            # Keras re-raises any constructor error as a TypeError about
            # deserialisation; an invalid argument (say, in an edited .keras
            # file) should fail on load as the ValueError naming it.
            if isinstance(error.__context__, ValueError):
                raise error.__context__ from None
            raise

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                **self.options.to_dict(),
                "position_bias": self.position_bias,
                "seed": self.seed,
                "score_kernel_initializer": keras.initializers.serialize(
                    self.score_kernel_initializer
                ),
                "score_bias_initializer": keras.initializers.serialize(
                    self.score_bias_initializer
                ),
                "score_bias_trainable": self.score_bias_trainable,
                "track_kept_fraction": self.track_kept_fraction,
                "data_format": self.data_format,
            }
        )
        return config


# Replaced, not formatted: the docstring's equations hold braces.
EnergyMask.__doc__ = EnergyMask.__doc__.replace(
    "{options}\n", fields.docstring_arguments(MaskOptions, " " * 8) + "\n"
)


# `layer.patch_size`, `layer.temperature`, ...: read-only views of
# `layer.options`, as Keras layers expose their arguments.
for _name in MaskOptions.names():
    setattr(EnergyMask, _name, property(
        lambda layer, name=_name: getattr(layer.options, name),
        doc=f"`options.{_name}` (read-only).",
    ))
del _name
