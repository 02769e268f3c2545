import socket
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_ersm.datasets import SUPPORTED_DATASETS
from keras_ersm.datasets import DatasetUnavailableError
from keras_ersm.datasets import EpochOrder
from keras_ersm.datasets import benchmark_is_built
from keras_ersm.datasets import build_benchmark
from keras_ersm.datasets import load
from keras_ersm.datasets import load_benchmark
from keras_ersm.datasets import loaders
from keras_ersm.datasets.benchmark import ErsmBenchmarkConfig
from offline_fakes import OUTLINE
from offline_fakes import PET
from offline_fakes import PETS
from offline_fakes import forbid_network
from offline_fakes import prepare_fake_pets


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def raw_test(data_dir):
    # Building through `load_benchmark` first checks that it prepares the
    # dataset by itself.
    load_benchmark("test", 8, 32, data_dir=data_dir)
    builder = tfds.builder("ersm_benchmark/32", data_dir=data_dir)
    return tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))


@pytest.fixture
def no_network(monkeypatch):
    """No host answers; no proxy is configured (each test sets its own)."""
    for scheme in ("http", "https", "all", "no"):
        for variable in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            monkeypatch.delenv(variable, raising=False)
    calls = []

    def probe(host, *args, **kwargs):
        calls.append(host)
        return False

    monkeypatch.setattr(loaders, "network_available", probe)
    return calls


def test_load_benchmark_images_labels_object_masks(data_dir, raw_test):
    ds = load_benchmark("test", 16, 32, with_object_masks=True,
                        data_dir=data_dir)
    images, labels, object_masks = next(iter(ds))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (16,) and labels.dtype == tf.int32
    assert object_masks.shape == (16, 32, 32, 1)
    assert object_masks.dtype == tf.float32
    # `test` is not shuffled by default: same order as tfds.
    np.testing.assert_allclose(
        images.numpy(), raw_test["image"][:16] / 255.0, atol=1e-6
    )
    np.testing.assert_array_equal(labels.numpy(), raw_test["label"][:16])
    np.testing.assert_array_equal(object_masks.numpy(),
                                  raw_test["object_mask"][:16])


def test_load_benchmark_backbone_preprocessing(data_dir, raw_test):
    ds = load_benchmark("test", 4, 32, backbone="ResNet50", data_dir=data_dir)
    images, _ = next(iter(ds))
    # ResNet50's (caffe) preprocessing: RGB to BGR, ImageNet means removed.
    bgr = raw_test["image"][:4, ..., ::-1].astype(np.float32)
    expected = bgr - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-3)


def test_load_benchmark_resizes_images_and_object_masks(data_dir):
    ds = load_benchmark(
        "test_shuffled",
        None,
        48,
        with_object_masks=True,
        data_dir=data_dir,
        config="32",
    )
    image, label, object_mask = next(iter(ds))
    assert image.shape == (48, 48, 3) and label.shape == ()
    assert object_mask.shape == (48, 48, 1)
    assert 0.0 <= image.numpy().min() and image.numpy().max() <= 1.0
    assert set(np.unique(object_mask.numpy())) == {0.0, 1.0}


def test_load_benchmark_shuffles_train_only_by_default(data_dir):
    def labels(**kwargs):
        ds = load_benchmark("train", 500, 32, data_dir=data_dir, **kwargs)
        return np.concatenate([y.numpy() for _, y in ds])

    shuffled, ordered = labels(), labels(shuffle=False)
    np.testing.assert_array_equal(np.sort(shuffled), np.sort(ordered))
    assert not np.array_equal(shuffled, ordered)
    np.testing.assert_array_equal(labels(seed=0), shuffled)


def test_an_epoch_order_shuffles_each_epoch_by_seed_and_epoch(data_dir):
    def epoch_labels(order, dataset, epoch):
        order.on_epoch_begin(epoch)
        return np.concatenate([y.numpy() for _, y in dataset])

    def pipeline(seed=0):
        order = EpochOrder()
        return order, load_benchmark("train", 500, 32, data_dir=data_dir,
                                     seed=seed, order=order)

    order, train = pipeline()
    assert int(train.cardinality()) == 4
    first = [epoch_labels(order, train, epoch) for epoch in range(3)]
    ordered = load_benchmark("train", 500, 32, data_dir=data_dir,
                             shuffle=False)
    ordered = np.concatenate([y.numpy() for _, y in ordered])
    for labels in first:
        np.testing.assert_array_equal(np.sort(labels), np.sort(ordered))
        assert not np.array_equal(labels, ordered)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[1], first[2])
    # Passes in any order, and a new pipeline (as in a new process),
    # under any global seed: epoch e has the order of epoch e.
    keras.utils.set_random_seed(7)
    again_order, again = pipeline()
    for epoch in (2, 0, 1, 1):
        np.testing.assert_array_equal(
            epoch_labels(again_order, again, epoch), first[epoch])
    other_order, other = pipeline(seed=1)
    assert not np.array_equal(epoch_labels(other_order, other, 0), first[0])


def test_passes_before_any_recorded_epoch_are_reshuffled(data_dir):
    # E.g. the callback left out of fit: not one order for every epoch.
    def passes():
        train = load_benchmark("train", 500, 32, data_dir=data_dir,
                               order=EpochOrder())
        return [np.concatenate([y.numpy() for _, y in train])
                for _ in range(2)]

    first = passes()
    assert not np.array_equal(first[0], first[1])
    for again, labels in zip(passes(), first):
        np.testing.assert_array_equal(again, labels)


def test_bad_epoch_orders_are_refused_before_the_data_is_looked_up(
        monkeypatch):
    def looked_up(*args, **kwargs):
        raise AssertionError("the dataset was looked up")

    monkeypatch.setattr(tfds, "builder", looked_up)
    with pytest.raises(ValueError, match=r"`load`: argument `shuffle` must "
                       r"be True \(or None for a train split\) when an "
                       r"`order` is given; received False\. Pass "
                       r"shuffle=True, or no `order`\."):
        load("oxford_iiit_pet", "test", order=EpochOrder())
    with pytest.raises(ValueError, match=r"`load` with an `order`: argument "
                       r"`seed` must be an integer >= 0"):
        load("oxford_iiit_pet", "train", seed=None, order=EpochOrder())


def test_bad_epoch_orders_are_refused(data_dir):
    with pytest.raises(ValueError, match=r"`load_benchmark`: argument "
                       r"`order` must be None or a "
                       r"keras_ersm\.datasets\.EpochOrder; received 3\."):
        load_benchmark("train", 8, 32, data_dir=data_dir, order=3)
    with pytest.raises(ValueError, match=r"`load_benchmark`: argument "
                       r"`shuffle` must be True \(or None for a train "
                       r"split\) when an `order` is given; received False"):
        load_benchmark("test", 8, 32, data_dir=data_dir, order=EpochOrder())
    with pytest.raises(ValueError, match=r"`load_benchmark` with an `order`: "
                       r"argument `seed` must be an integer >= 0; received "
                       r"None\."):
        load_benchmark("train", 8, 32, data_dir=data_dir, seed=None,
                       order=EpochOrder())


def test_benchmark_config_choice():
    assert loaders._benchmark_config(24, None) == "32"
    assert loaders._benchmark_config(32, None) == "32"
    assert loaders._benchmark_config(48, None) == "64"
    assert loaders._benchmark_config(224, None) == "64"
    assert loaders._benchmark_config(224, "32") == "32"


def test_a_cached_build_of_other_settings_is_refused(tmp_path, capsys):
    # tfds finds a build by config name and version only.
    def config(**settings):
        return ErsmBenchmarkConfig(name="mine", image_size=8, num_train=5,
                                   num_test=2, **settings)

    data_dir = str(tmp_path)
    first = load_benchmark("train", None, 8, data_dir=data_dir,
                           config=config())
    assert len(list(first)) == 5
    # Rendered without tfds's "Downloading and preparing dataset" lines.
    assert capsys.readouterr().out == ""
    again = load_benchmark("train", None, 8, data_dir=data_dir,
                           config=config())
    assert len(list(again)) == 5
    for other in ({"seed": 1}, {"correlation": 0.5}):
        with pytest.raises(ValueError, match=r"load_benchmark.*mine.*holds a "
                           r"build of config 'mine' with .*not the requested"
                           r".*Give the config another name"):
            load_benchmark("train", None, 8, data_dir=data_dir,
                           config=config(**other))


def test_building_the_benchmark_says_what_it_renders(tmp_path, capsys,
                                                     caplog):
    config = ErsmBenchmarkConfig(name="told", image_size=8, num_train=5,
                                 num_test=2, num_pretrain=3, num_validation=4)
    data_dir = str(tmp_path)
    assert not benchmark_is_built(8, data_dir=data_dir, config=config)
    folder = build_benchmark(8, data_dir=data_dir, config=config,
                             verbose=True)
    # Not tfds's "Downloading and preparing dataset Unknown size (...)":
    # nothing is downloaded.
    assert capsys.readouterr().out == (
        "Rendering 16 images of 8x8 (5 train, 2 test, 2 test_shuffled, "
        "3 pretrain, 4 validation) from scikit-learn's digits and scikit-image's photos "
        f"into {folder}\n")
    assert folder.startswith(data_dir)
    assert benchmark_is_built(8, data_dir=data_dir, config=config)
    # Built: nothing to render or say.
    assert build_benchmark(8, data_dir=data_dir, config=config,
                           verbose=True) == folder
    assert capsys.readouterr().out == ""
    # Nor tfds's warning about the folder it has not yet written.
    assert not [record for record in caplog.records
                if "has no dataset_info.json" in record.getMessage()]


def test_load_benchmark_rejects_bad_batch_size(data_dir):
    with pytest.raises(ValueError, match="`load_benchmark`: argument "
                       "`batch_size` must be None or an integer >= 1; "
                       "received 0."):
        load_benchmark("test", 0, 32, data_dir=data_dir)
    with pytest.raises(ValueError, match="`load_benchmark`: argument "
                       "`with_background` must be False when "
                       "`with_object_masks` is True; received True."):
        load_benchmark("test", 8, 32, data_dir=data_dir,
                       with_object_masks=True, with_background=True)


def test_load_fails_fast_when_offline(tmp_path, no_network):
    empty = str(tmp_path / "empty")
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as info:
        load("oxford_iiit_pet", "test", data_dir=empty)
    assert time.monotonic() - start < 5.0
    assert no_network == ["thor.robots.ox.ac.uk"]
    message = str(info.value)
    assert "'oxford_iiit_pet'" in message
    assert empty in message
    assert "download_and_prepare()" in message
    assert isinstance(info.value, RuntimeError)


def test_offline_probe_goes_through_a_configured_proxy(
    tmp_path, no_network, monkeypatch
):
    # Behind a proxy the download host is not reachable directly, but tfds
    # would download through the proxy: the proxy is what must answer.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with pytest.raises(DatasetUnavailableError,
                       match="through the proxy http://proxy.example:3128"):
        load("oxford_iiit_pet", "test", data_dir=str(tmp_path / "empty"))
    assert no_network == ["proxy.example"]
    monkeypatch.setenv("NO_PROXY", "thor.robots.ox.ac.uk")
    with pytest.raises(DatasetUnavailableError):
        load("oxford_iiit_pet", "test", data_dir=str(tmp_path / "empty"))
    assert no_network == ["proxy.example", "thor.robots.ox.ac.uk"]


def test_load_fails_fast_with_the_real_probe(tmp_path, monkeypatch):
    # An unresolvable host (RFC 2606) makes the real probe fail whatever the
    # network state of the machine running the test.
    spec = SUPPORTED_DATASETS["cifar10"]._replace(download_host="tfds.invalid")
    monkeypatch.setitem(SUPPORTED_DATASETS, "cifar10", spec)
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match="cifar10"):
        load("cifar10", "test", data_dir=str(tmp_path))
    assert time.monotonic() - start < 5.0


def test_network_probe_is_bounded_and_correct():
    start = time.monotonic()
    assert not loaders.network_available("tfds.invalid", timeout=1.0)
    # A non-routable address: the connection hangs until the timeout, or an
    # intercepting proxy accepts it but cannot prove it is that host.
    assert not loaders.network_available("10.255.255.1", timeout=0.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert loaders.network_available("127.0.0.1", port=port, timeout=1.0)
    assert time.monotonic() - start < 3.0


def test_load_reads_a_prepared_dataset(monkeypatch, tmp_path):
    # mock_data stands in for prepared files; the probe must not matter.
    monkeypatch.setattr(loaders, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(
        num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        ds = load(
            "cifar10",
            "test",
            40,
            4,
            backbone="MobileNetV2",
            data_dir=str(tmp_path),
        )
        batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [4, 2]
    images, labels = batches[0]
    assert images.shape == (4, 40, 40, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32
    assert -1.0 <= images.numpy().min() and images.numpy().max() <= 1.0
    assert images.numpy().min() < -0.5 and images.numpy().max() > 0.5


def test_load_reads_prepared_pets_without_the_network(
        tmp_path, no_network, monkeypatch):
    # Prepared by tfds's own oxford_iiit_pet builder, from local files.
    trimaps = prepare_fake_pets(str(tmp_path), num_train=3, num_test=5)
    forbid_network(monkeypatch)
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("localhost", 80))
    ds = load(PETS, "test", 16, 2, backbone="ResNet50",
              data_dir=str(tmp_path), with_object_masks=True)
    batches = list(ds)
    assert no_network == []  # a prepared dataset needs no probe
    images, labels, object_masks = (
        np.concatenate([batch[i].numpy() for batch in batches])
        for i in range(3))
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.float32
    assert sorted(labels) == list(trimaps["test"])
    for label, object_mask in zip(labels, object_masks):
        trimap = trimaps["test"][label]
        # Pet and outline, resized as the images are.
        foreground = tf.image.resize(
            np.isin(trimap, (PET, OUTLINE)).astype(np.float32), (16, 16),
            method="nearest")
        np.testing.assert_array_equal(object_mask, foreground)
        assert 0 < object_mask.mean() < 1
    train = load(PETS, "train", 16, None, data_dir=str(tmp_path))
    assert sorted(int(label) for _, label in train) == [0, 1, 2]


def test_load_validates_arguments(no_network):
    with pytest.raises(ValueError, match="`load`: argument `name` must be "
                       "one of caltech_birds2011.*cifar10.*; received "
                       "'imagenet2012'."):
        load("imagenet2012")
    with pytest.raises(ValueError, match="`load`: argument "
                       "`with_object_masks` must be False for 'food101', "
                       "which has no segmentation; received True. Datasets "
                       "with object masks: .*oxford_iiit_pet"):
        load("food101", with_object_masks=True)
    with pytest.raises(ValueError, match="`get_preprocessing`: argument "
                       "`backbone` must be None or one of .*; received "
                       "'AlexNet'."):
        load("cifar10", backbone="AlexNet")
    # Every error above is raised before looking for data.
    assert no_network == []


def _encode_png(array):
    return tf.io.encode_png(tf.constant(array))


def test_map_fn_pet_trimap_to_foreground():
    trimap = np.full((20, 30, 1), 2, np.uint8)  # background
    trimap[5:15, 5:12] = 1  # pet
    trimap[5:15, 12:15] = 3  # outline
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    spec = SUPPORTED_DATASETS["oxford_iiit_pet"]
    map_fn = loaders.make_map_fn(10, None, spec.object_mask_key,
                                 spec.object_mask_fn)
    example = {
        "image": _encode_png(image),
        "label": np.int64(36),
        "segmentation_mask": _encode_png(trimap),
    }
    out_image, label, object_mask = map_fn(example)
    assert out_image.shape == (10, 10, 3) and label.numpy() == 36
    assert label.dtype == tf.int32
    expected = np.zeros((20, 30), np.float32)
    expected[5:15, 5:15] = 1.0
    # Nearest-neighbour resizing samples the centres of 2x3 pixel blocks.
    np.testing.assert_array_equal(object_mask.numpy()[..., 0],
                                  expected[1::2, 1::3])


def test_map_fn_bird_object_mask_is_majority_vote():
    segmentation = np.zeros((8, 8, 1), np.uint8)
    segmentation[:, 2] = 102  # 2 of 5 annotators
    segmentation[:, 4] = 153  # 3 of 5
    segmentation[:, 6] = 255
    spec = SUPPORTED_DATASETS["caltech_birds2011"]
    map_fn = loaders.make_map_fn(8, None, spec.object_mask_key,
                                 spec.object_mask_fn)
    _, _, object_mask = map_fn(
        {
            "image": np.zeros((8, 8, 3), np.uint8),
            "label": 0,
            "segmentation_mask": segmentation,
        }
    )
    np.testing.assert_array_equal(
        object_mask.numpy()[0, :, 0], [0, 0, 0, 0, 1, 0, 1, 0]
    )


def test_map_fn_encoded_and_decoded_images_agree():
    image = np.random.default_rng(1).integers(0, 256, (24, 24, 3), np.uint8)
    map_fn = loaders.make_map_fn(24, "EfficientNetV2B0")
    decoded, _ = map_fn({"image": image, "label": 1})
    encoded, _ = map_fn({"image": _encode_png(image), "label": 1})
    np.testing.assert_array_equal(decoded.numpy(), encoded.numpy())
    # EfficientNetV2 rescales its inputs itself: the pixels stay [0, 255].
    np.testing.assert_allclose(decoded.numpy(), image.astype(np.float32),
                               atol=1e-3)


def test_map_fn_requires_object_mask_fn_with_object_mask_key():
    with pytest.raises(ValueError, match="`make_map_fn`: argument "
                       "`object_mask_fn` must be a function when "
                       "`object_mask_key` is set "
                       r"\(object_mask_key='segmentation_mask'\); received "
                       "None."):
        loaders.make_map_fn(8, object_mask_key="segmentation_mask")
