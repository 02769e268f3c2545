"""authors_recipe: the authors' optimiser, schedule and loss."""

import numpy as np
import pytest

import keras

from keras_ersm import recipes


def test_authors_recipe():
    recipe = recipes.authors_recipe(total_steps=100)
    optimizer = recipe["optimizer"]
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(1e-4)
    schedule = optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    assert schedule["config"]["decay_steps"] == 100
    for step, rate in [(0, 1e-3), (50, 5e-4), (100, 0.0)]:
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(
            rate, abs=1e-10)
    assert isinstance(recipe["loss"],
                      keras.losses.SparseCategoricalCrossentropy)
    with pytest.raises(ValueError, match="`authors_recipe`: argument "
                       "`total_steps` must be an integer >= 1; received 0."):
        recipes.authors_recipe(0)


def test_authors_recipe_steps_the_cosine_once_per_epoch():
    # PyTorch's CosineAnnealingLR(T_max=20) stepped after each epoch:
    # epoch e trains at 1e-3 * (1 + cos(pi * e / 20)) / 2, all its steps.
    optimizer = recipes.authors_recipe(
        total_steps=20 * 7, steps_per_epoch=7)["optimizer"]
    for epoch in (0, 1, 10, 19):
        expected = 1e-3 * (1 + np.cos(np.pi * epoch / 20)) / 2
        for step in (7 * epoch, 7 * epoch + 6):
            optimizer.iterations.assign(step)
            assert float(optimizer.learning_rate) == pytest.approx(
                expected, rel=1e-6), (epoch, step)
    # One epoch trains at the first rate throughout.
    optimizer = recipes.authors_recipe(7, steps_per_epoch=7)["optimizer"]
    optimizer.iterations.assign(6)
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="`authors_recipe`: argument "
                       "`steps_per_epoch` must be None or an integer >= 1; "
                       "received 0."):
        recipes.authors_recipe(10, steps_per_epoch=0)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"learning_rate": -1.0}, "`learning_rate` must be a number "
         "> 0; received -1.0."),
        ({"learning_rate": 0}, "`learning_rate` must be a number > 0; "
         "received 0."),
        ({"learning_rate": "x"}, "`learning_rate` must be a number "
         "> 0; received 'x'."),
        ({"learning_rate": float("nan")}, "`learning_rate` must be a "
         "number > 0; received nan."),
        ({"learning_rate": True}, "`learning_rate` must be a number "
         "> 0; received True."),
        ({"weight_decay": -5}, "`weight_decay` must be a number >= 0; "
         "received -5."),
        ({"weight_decay": float("inf")}, "`weight_decay` must be a "
         "number >= 0; received inf."),
    ],
)
def test_authors_recipe_rejects_invalid_rates(kwargs, expected):
    with pytest.raises(ValueError) as info:
        recipes.authors_recipe(100, **kwargs)
    assert str(info.value) == f"`authors_recipe`: argument {expected}"


def test_authors_recipe_accepts_its_domain_boundaries():
    recipe = recipes.authors_recipe(10, learning_rate=2, weight_decay=0)
    optimizer = recipe["optimizer"]
    assert optimizer.weight_decay == 0
    assert float(optimizer.learning_rate) == pytest.approx(2.0)
