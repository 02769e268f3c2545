import json

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import deletion
from keras_ersm.evaluation import splitting

from ersm_test_models import REGION
from ersm_test_models import region_baseline_model
from ersm_test_models import region_ersm_model

# Image: 1 on the region R (4 tokens), 2 elsewhere; label 0. The model says
# 0 while >= 3 tokens of R are kept. Least important first:
# learned (R has the highest keep) deletes the 12 others first: correct
# for k = 0..13 -> area 13.5 / 16; magnitude (R has the lowest norm)
# deletes R first: correct for k = 0, 1 -> area 1.5 / 16.
IMAGE = np.where(REGION > 0, 1.0, 2.0).astype(np.float32)[None, :, :, None]


def dataset(num_images=3, batch_size=2):
    images = np.repeat(IMAGE, num_images, axis=0)
    labels = np.zeros(num_images, np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(
        batch_size
    )


def test_deletion_steps():
    assert deletion.deletion_steps(3).tolist() == [0, 1, 2, 3]
    assert deletion.deletion_steps(100, steps=4).tolist() == [0, 25, 50, 75,
                                                              100]
    assert deletion.deletion_steps(50, steps=None).tolist() == list(range(51))
    with pytest.raises(ValueError, match="`deletion_steps`: argument "
                       "`steps` must be None or an integer >= 1; received "
                       "0."):
        deletion.deletion_steps(10, steps=0)


def test_deletion_ranks_break_ties_by_index():
    priorities = tf.constant([[[0.3, 0.1], [0.1, 0.4]]])
    assert deletion.deletion_ranks(priorities).numpy().tolist() == [
        [[2, 0], [1, 3]]
    ]
    assert deletion.deletion_ranks(priorities, True).numpy().tolist() == [
        [[1, 2], [3, 0]]
    ]


def test_tie_broken_priorities_match_numpy_lexsort():
    rng = np.random.default_rng(0)
    primary = rng.integers(0, 2, size=(3, 4, 5)).astype(np.float32)
    secondary = rng.integers(0, 4, size=(3, 4, 5)).astype(np.float32)
    ranks = deletion.tie_broken_priorities(primary, secondary).numpy()
    for image in range(3):
        # lexsort: the last key is the primary; the rest by index.
        order = np.lexsort((np.arange(20), secondary[image].ravel(),
                            primary[image].ravel()))
        expected = np.empty(20)
        expected[order] = np.arange(20)
        assert ranks[image].ravel().tolist() == expected.tolist()


def test_binary_mask_ties_are_ranked_by_the_keep_probability():
    # Hard-concrete gates keep all 16 tokens (every score < 0): the mask is
    # 1 everywhere. R's scores are lower (higher keep), so the learned order
    # deletes the 12 others first, as in the hand computation below; by
    # token index alone it would delete R's first row at k = 1, 2.
    result = deletion.deletion_curves(
        region_ersm_model(gate="hard_concrete"), dataset(),
        orders=("learned",),
    )
    assert result["curves"]["learned"]["accuracy"] == [1.0] * 14 + [0.0] * 3


def test_mask_mass_scaled_output_is_what_the_head_sees():
    # Only R is kept (scores -5 vs +3): "mask_mass" multiplies R by
    # 16 / (4 + 0.016) = 3.98, logit0 = 15.9 > 10, so the model is right;
    # x * mask alone (logit0 = 4) would be wrong before any deletion. R's
    # tokens go last; with 3 left logit0 = 11.9 > 10, with 2 left 7.96.
    model = region_ersm_model(region_score=-5.0, other_score=3.0,
                              threshold=10.0, gate="hard_concrete",
                              output_scaling="mask_mass")
    images = np.repeat(IMAGE, 3, axis=0)
    assert np.all(np.argmax(model.predict(images, verbose=0), -1) == 0)
    result = deletion.deletion_curves(model, dataset(), orders=("learned",))
    assert result["curves"]["learned"]["accuracy"] == [1.0] * 14 + [0.0] * 3


def test_curves_match_hand_computation():
    result = deletion.deletion_curves(
        region_ersm_model(), dataset(), orders=("learned", "magnitude",
                                                "random"),
    )
    assert result["direction"] == "least_important_first"
    assert result["higher_is_better"] is True
    assert result["num_images"] == 3 and result["num_tokens"] == 16
    learned = result["curves"]["learned"]
    assert learned["num_deleted"] == list(range(17))
    assert learned["accuracy"] == [1.0] * 14 + [0.0] * 3
    assert learned["area"] == pytest.approx(13.5 / 16)
    magnitude = result["curves"]["magnitude"]
    assert magnitude["accuracy"] == [1.0] * 2 + [0.0] * 15
    assert magnitude["area"] == pytest.approx(1.5 / 16)
    random = result["curves"]["random"]
    assert random["accuracy"][0] == 1.0 and random["accuracy"][-1] == 0.0
    # The random order depends on the seed, not on the batching.
    rebatched = deletion.deletion_curves(region_ersm_model(), dataset(3, 3),
                                         orders=("random",))
    assert rebatched["curves"]["random"] == random


def test_tokens_are_deleted_from_the_masked_map():
    # keep = sigmoid(1) = 0.731 on R, sigmoid(0) = 0.5 elsewhere. The head
    # sees the masked map: 4 * 0.731 = 2.92 > 2.5 but 3 * 0.731 = 2.19 <
    # 2.5, so an image is correct only while all of R is kept. Learned
    # deletes the 12 others (keep 0.5) first: correct for k = 0..12, area
    # 12.5 / 16. The unmasked map (3 > 2.5) would stay correct at k = 13.
    result = deletion.deletion_curves(
        region_ersm_model(region_score=-1.0, other_score=0.0), dataset(),
        orders=("learned",),
    )
    learned = result["curves"]["learned"]
    assert learned["accuracy"] == [1.0] * 13 + [0.0] * 4
    assert learned["area"] == pytest.approx(12.5 / 16)


def test_random_order_depends_on_the_seed_and_differs_per_image(
        monkeypatch):
    captured = []
    deletion_ranks = deletion.deletion_ranks

    def capture(priorities, most_important_first=False):
        ranks = deletion_ranks(priorities, most_important_first)
        captured.append(ranks.numpy())
        return ranks

    monkeypatch.setattr(deletion, "deletion_ranks", capture)
    ranks, curves = {}, {}
    for seed in (0, 1):
        captured.clear()
        curves[seed] = deletion.deletion_curves(
            region_ersm_model(), dataset(), orders=("random",), seed=seed
        )["curves"]["random"]["accuracy"]
        ranks[seed] = np.concatenate(captured)
        # An image stays correct while >= 3 tokens of R are kept (0.993 *
        # 3 > 2.5 > 0.993 * 2): the curve follows from the captured ranks.
        in_region = REGION.astype(bool)
        expected = [
            np.mean([np.sum(image[in_region] < k) < 2
                     for image in ranks[seed]])
            for k in range(17)
        ]
        assert curves[seed] == pytest.approx(expected)
    # The two images of the first batch get different random orders, and
    # so do two seeds; a fixed (e.g. raster) order would give neither.
    assert not np.array_equal(ranks[0][0], ranks[0][1])
    assert not np.array_equal(ranks[0], ranks[1])
    assert curves[0] != curves[1]


def test_most_important_first_reverses_the_order():
    result = deletion.deletion_curves(
        region_ersm_model(), dataset(), orders=("learned", "magnitude"),
        most_important_first=True,
    )
    assert result["direction"] == "most_important_first"
    assert result["higher_is_better"] is False
    # Learned now deletes R first: correct for k = 0, 1.
    assert result["curves"]["learned"]["area"] == pytest.approx(1.5 / 16)
    # Magnitude deletes the 12 large tokens first.
    assert result["curves"]["magnitude"]["area"] == pytest.approx(13.5 / 16)


def test_gradcam_order_uses_the_baseline():
    # The baseline predicts class 0 (logit0 = 1 - 1.5 > -1); its Grad-CAM is
    # x * R / 16: zero off R, so the 12 other tokens go first, like the
    # learned order.
    result = deletion.deletion_curves(
        region_ersm_model(), dataset(), orders=("gradcam",),
        baseline=region_baseline_model(other_logit=-1.0),
    )
    assert result["curves"]["gradcam"]["area"] == pytest.approx(13.5 / 16)
    # Grad-CAM of the true class (0) is the same map.
    by_label = deletion.deletion_curves(
        region_ersm_model(), dataset(), orders=("gradcam",),
        baseline=region_baseline_model(), gradcam_target="label",
    )
    assert by_label["curves"]["gradcam"]["area"] == pytest.approx(13.5 / 16)
    with pytest.raises(ValueError, match="`deletion_curves`: argument "
                       "`baseline` must be the unmasked baseline model when "
                       "`orders` has 'gradcam' for an ERSM model.*; received "
                       "None."):
        deletion.deletion_curves(region_ersm_model(), dataset(),
                                 orders=("gradcam",))


def test_gradcam_is_area_pooled_onto_the_token_grid():
    # 8 x 8 feature map, tokens of 4 x 4: a 2 x 2 token grid. R is the
    # single pixel (0, 0); x = 1 everywhere, so the baseline's Grad-CAM is
    # 1/64 at (0, 0) and 0 elsewhere. Area pooling gives token (0, 0) the
    # only non-zero priority (1/1024): it is deleted last. One sampled pixel
    # per token (nearest: (2, 2); bilinear: the centre 2 x 2) sees 0 there:
    # all tokens tie and token (0, 0) would go first.
    region = np.zeros((8, 8), np.float32)
    region[0, 0] = 1.0
    # logit0 = x(0, 0) - (sum of x off R) / 64 = 1/64 > logit1 = 1/128 while
    # token (0, 0) is kept; after it is deleted logit0 <= 0.
    baseline = region_baseline_model(region, size=8, other_logit=1 / 128)
    images = np.ones((2, 8, 8, 1), np.float32)
    data = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(2, np.int32))
    ).batch(2)
    result = deletion.deletion_curves(baseline, data, orders=("gradcam",),
                                      patch_size=4)
    assert result["num_tokens"] == 4
    assert result["curves"]["gradcam"]["accuracy"] == [1.0] * 4 + [0.0]


@pytest.mark.parametrize("arguments", [{"patch_size": 2},
                                       {"feature_layer": "positional"}])
def test_ersm_model_tokens_are_the_mask_layers(arguments):
    # A token size or layer the ERSM model would not use is an error, not
    # silently replaced by its mask layer's; the mask's own is accepted.
    [(argument, value)] = arguments.items()
    with pytest.raises(ValueError, match=f"`deletion_curves`: argument "
                       f"`{argument}` must be None (or 1 )?for an ERSM "
                       f"model, whose mask layer .* has the tokens deleted; "
                       f"received {value!r}."):
        deletion.deletion_curves(region_ersm_model(), dataset(), **arguments)
    result = deletion.deletion_curves(region_ersm_model(), dataset(),
                                      orders=("magnitude",), patch_size=1)
    assert result["num_tokens"] == 16


def test_baseline_model_deletes_its_feature_map_tokens():
    baseline = region_baseline_model()
    result = deletion.deletion_curves(baseline, dataset(),
                                      orders=("magnitude", "gradcam"))
    # logit0 = mean_R(x) - mean(x off R) * 12 / 16 = 1 - 1.5 < 0 at k = 0:
    # wrong until the large tokens are deleted.
    assert result["num_tokens"] == 16
    assert result["curves"]["magnitude"]["accuracy"][0] == 0.0
    with pytest.raises(ValueError, match=r"`deletion_curves`: argument "
                       r"`orders` must be without 'learned' for a model "
                       r"without an EnergyMask layer; received "
                       r"\('learned',\)\."):
        deletion.deletion_curves(baseline, dataset(), orders=("learned",))


def test_deletion_curve_matches_a_per_image_loop():
    rng = np.random.default_rng(1)
    model = region_ersm_model()
    split = splitting.split_at_mask(model)
    features = rng.random((5, 4, 4, 1), np.float32) * 2.0
    labels = rng.integers(0, 2, 5)
    priorities = rng.random((5, 4, 4), np.float32)
    curve = deletion.deletion_curve(split.head, features, labels, priorities,
                                    batch_size=2, order="test")
    expected = []
    for k in range(17):
        hits = 0
        for image, label, priority in zip(features, labels, priorities):
            keep = np.ones(16, np.float32)
            keep[np.argsort(priority.reshape(-1), kind="stable")[:k]] = 0.0
            kept = image * keep.reshape(4, 4, 1)
            hits += int(np.argmax(split.head(kept[None])[0]) == label)
        expected.append(hits / 5)
    np.testing.assert_allclose(curve.accuracy, expected)
    assert curve.order == "test" and curve.num_images == 5
    assert curve.to_dict()["area"] == curve.area


def test_numpy_integers_are_integers():
    assert deletion.deletion_steps(np.int64(100), steps=np.int32(4)).tolist(
        ) == [0, 25, 50, 75, 100]
    curves = deletion.deletion_curves(region_ersm_model(), dataset(),
                                      steps=np.int64(4), seed=np.int64(3))
    assert curves == deletion.deletion_curves(region_ersm_model(), dataset(),
                                              steps=4, seed=3)
    assert json.loads(json.dumps(curves)) == curves


def test_invalid_arguments():
    owner = "`deletion_curves`: "
    with pytest.raises(ValueError, match=owner + r"argument `seed` must be "
                       r"an integer >= 0; received None\."):
        deletion.deletion_curves(region_ersm_model(), dataset(), seed=None)
    orders = (r"argument `orders` must be a non-empty sequence of names from "
              r"\('learned', 'magnitude', 'random', 'gradcam'\)")
    with pytest.raises(ValueError, match=owner + orders + r"; received "
                       r"\('saliency',\)\."):
        deletion.deletion_curves(region_ersm_model(), dataset(),
                                 orders=("saliency",))
    with pytest.raises(ValueError, match=owner + orders + r", not one name; "
                       r"received 'learned'\. Pass orders=\('learned',\)\."):
        deletion.deletion_curves(region_ersm_model(), dataset(),
                                 orders="learned")
    with pytest.raises(ValueError, match=owner + r"argument `gradcam_target` "
                       r"must be one of \('predicted', 'label'\); received "
                       r"'best'\."):
        deletion.deletion_curves(region_ersm_model(), dataset(),
                                 gradcam_target="best")
    with pytest.raises(ValueError, match=owner + r"argument `mask_grid` must "
                       r"be one of \('mask', 'keep'\); received 'score'\."):
        deletion.deletion_curves(region_ersm_model(), dataset(),
                                 mask_grid="score")
