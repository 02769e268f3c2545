"""MaskOptions: one definition reaching the layer, the kernel, the
experiment and the command line."""

import dataclasses
import inspect
import json

import numpy as np
import pytest

from keras_ersm import EnergyMask
from keras_ersm import cli
from keras_ersm import energy
from keras_ersm import experiment
from keras_ersm import presets
from keras_ersm.mask_options import AUTHORS
from keras_ersm.mask_options import LEARNED
from keras_ersm.mask_options import MaskOptions

# A value other than the default for every option, each valid.
CHANGED = {
    "patch_size": 2,
    "formulation": "coherent",
    "unary_weight": 0.2,
    "pairwise_weight": 0.3,
    "temperature": 0.5,
    "energy_loss_weight": 0.0,
    "mean_field_steps": 1,
    "coupling": 0.25,
    "damping": 0.5,
    "neighbour_weights": "affinity",
    "gate": "sigmoid",
    "output_scaling": "none",
    "mask_mass_epsilon": 0.05,
}


def test_every_option_is_listed_here_with_a_new_value():
    assert set(CHANGED) == set(MaskOptions.names())
    defaults = MaskOptions()
    for name, value in CHANGED.items():
        assert getattr(defaults, name) != value, name


def test_the_signature_shows_every_option_with_its_default():
    parameters = inspect.signature(EnergyMask).parameters
    for field in dataclasses.fields(MaskOptions):
        assert parameters[field.name].default == field.default, field.name
        assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY
    assert "formulation='keeping_cost'" in str(inspect.signature(EnergyMask))


def test_the_defaults_are_the_mask_that_learns():
    assert EnergyMask().options == LEARNED == MaskOptions()
    assert (LEARNED.formulation, LEARNED.gate, LEARNED.output_scaling) == (
        "keeping_cost", "hard_concrete", "mask_mass")
    assert experiment.ExperimentConfig().mask == LEARNED


def test_the_authors_presets_are_their_energy():
    assert EnergyMask.from_preset("authors").options == AUTHORS
    assert AUTHORS.to_dict() == dict(
        LEARNED.to_dict(), formulation="reference", gate="sigmoid",
        output_scaling="none", unary_weight=1e-3, pairwise_weight=1e-3,
        temperature=1.0,
    )
    layer = EnergyMask.from_preset("authors_dynamics", patch_size=2,
                                   name="authors")
    assert layer.name == "authors"
    assert layer.options == MaskOptions(**dict(AUTHORS.to_dict(),
                                               patch_size=2))
    assert (layer.position_bias, layer.score_bias_trainable) == (True, False)
    assert layer.score_bias_initializer.value == 6.0
    # Each call, a new dict: changing one changes no preset.
    presets.mask_kwargs("authors_dynamics")["score_bias_initializer"][
        "config"]["value"] = 0.0
    assert presets.PRESETS["authors_dynamics"]["score_bias_initializer"][
        "config"]["value"] == 6.0
    with pytest.raises(ValueError, match=r"^`mask_kwargs`: argument `name` "
                       r"must be one of \['learned', 'authors', "
                       r"'authors_dynamics'\]; received 'paper'\.$"):
        EnergyMask.from_preset("paper")


def test_a_layer_saved_before_the_learned_defaults_loads_as_it_trained():
    # Saved before the gate and the scaling existed, when the defaults were
    # the authors' energy.
    saved = {"name": "mask", "trainable": True, "dtype": "float32",
             "patch_size": 1, "formulation": "reference",
             "unary_weight": 1e-3, "pairwise_weight": 1e-3,
             "temperature": 1.0, "energy_loss_weight": 1.0}
    assert EnergyMask.from_config(saved).options == AUTHORS


def test_the_token_energy_takes_every_option_of_the_grid():
    parameters = inspect.signature(energy.token_energy).parameters
    keyword_only = {name for name, parameter in parameters.items()
                    if parameter.kind is parameter.KEYWORD_ONLY}
    assert keyword_only - {"noise"} == set(
        MaskOptions().token_energy_arguments())


def test_the_layer_takes_documents_and_saves_every_option():
    layer = EnergyMask(**CHANGED, name="mask")
    assert layer.options == MaskOptions(**CHANGED)
    config = layer.get_config()
    assert {name: config[name] for name in CHANGED} == CHANGED
    assert EnergyMask.from_config(config).options == layer.options
    for name in MaskOptions.names():
        assert f"\n        {name}: " in EnergyMask.__doc__, name
        assert f"\n        {name}: " in MaskOptions.__doc__, name
    assert "{options}" not in EnergyMask.__doc__


def test_the_command_line_sets_every_option():
    flags = []
    for name, value in CHANGED.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    args = cli.build_parser().parse_args(["train", "--output", "run", *flags])
    config = cli._config_from(args, experiment)
    assert config.mask == MaskOptions(**CHANGED)


def test_invalid_values_name_the_owner_argument_and_domain():
    with pytest.raises(ValueError, match=r"^EnergyMask 'm': argument "
                       r"`damping` must be a number in \(0, 1\]; received "
                       r"1\.5\.$"):
        EnergyMask(damping=1.5, name="m")
    with pytest.raises(ValueError, match=r"^MaskOptions: argument `gate` "
                       r"must be one of \('sigmoid', 'hard_concrete'\); "
                       r"received 'l0'\.$"):
        MaskOptions(gate="l0")
    with pytest.raises(ValueError, match="`mean_field_steps` must be an "
                       "integer >= 0; received 1.5"):
        MaskOptions(mean_field_steps=1.5)


def test_values_are_stored_as_python_values_and_frozen():
    options = MaskOptions(patch_size=np.int64(2), temperature=np.float32(0.5),
                          gate=np.str_("hard_concrete"))
    assert [type(options.patch_size), type(options.temperature),
            type(options.gate)] == [int, float, str]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.temperature = 1.0
    # Hashable, as the compiled kernels' cache needs.
    assert {options: 1}[dataclasses.replace(options)] == 1


def test_the_layer_reads_its_options_back_by_name():
    layer = EnergyMask(**CHANGED)
    for name, value in CHANGED.items():
        assert getattr(layer, name) == value
    with pytest.raises(AttributeError):
        layer.patch_size = 3


def test_options_and_experiment_fields_do_not_share_a_name():
    # ExperimentConfig spells both flat, in one namespace.
    fields = {field.name for field in
              dataclasses.fields(experiment.ExperimentConfig)}
    assert not fields & set(MaskOptions.names())


def test_a_layer_config_saved_before_the_newer_options_loads():
    # `get_config` of an EnergyMask before `damping`, `neighbour_weights`
    # and `mask_mass_epsilon` were layer arguments: they take defaults.
    saved = {
        "name": "mask", "trainable": True, "dtype": "float32",
        "patch_size": 2, "formulation": "keeping_cost",
        "unary_weight": 0.01, "pairwise_weight": 0.01,
        "temperature": 2 / 3, "energy_loss_weight": 1.0,
        "position_bias": False, "mean_field_steps": 3, "coupling": 0.5,
        "gate": "hard_concrete", "output_scaling": "mask_mass", "seed": 0,
        "score_kernel_initializer": "zeros", "score_bias_initializer": None,
        "score_bias_trainable": True, "track_kept_fraction": True,
        "data_format": None,
    }
    layer = EnergyMask.from_config(saved)
    assert layer.options == MaskOptions(**{
        name: saved[name] for name in MaskOptions.names() if name in saved})
    assert (layer.damping, layer.neighbour_weights,
            layer.mask_mass_epsilon) == (1.0, "uniform", 1e-3)


def test_a_run_folder_without_the_newer_options_loads_as_it_trained(
        tmp_path):
    config = experiment.quick_config("reference")
    values = config.to_dict()
    for name in ("damping", "neighbour_weights", "mask_mass_epsilon",
                 "gate", "output_scaling"):
        del values[name]
    (tmp_path / "config.json").write_text(json.dumps(values))
    # Options it does not name are the layer's defaults, as when it trained
    # (not the learned mask's hard-concrete gate and mask-mass scaling).
    assert experiment.load_config(str(tmp_path)) == config


def test_a_config_takes_a_mask_and_flat_options_on_top():
    mask = MaskOptions(formulation="coherent", coupling=0.2)
    config = experiment.ExperimentConfig.from_dict(
        {"mask": mask, "coupling": 0.3})
    assert config.mask == MaskOptions(formulation="coherent", coupling=0.3)
    assert experiment.ExperimentConfig.from_dict(
        {"mask": mask.to_dict()}).mask == mask
    assert config.replace(mask=mask).mask == mask
    with pytest.raises(ValueError, match="^ExperimentConfig: argument "
                       "`mask` must be a MaskOptions or its dict; received "
                       "'coherent'.$"):
        experiment.ExperimentConfig.from_dict({"mask": "coherent"})
