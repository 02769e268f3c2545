"""Ready `tf.data` pipelines for the ERSM benchmark and the paper's datasets."""

import collections
import os
import socket
import ssl
import threading
import urllib.parse
import urllib.request

import tensorflow as tf
import tensorflow_datasets as tfds

from keras_ersm import validation
from keras_ersm.datasets import benchmark
from keras_ersm.datasets.epoch_order import EpochOrder
from keras_ersm.preprocessing import get_preprocessing

# Encoded examples held by the shuffle buffer; images are decoded after
# shuffling so that the buffer stays small for large photographs.
_SHUFFLE_BUFFER = 2048
# Seconds the network probe may take, DNS lookup included.
_PROBE_TIMEOUT = 2.0
# The benchmark is rendered locally: never ask GCS for a prepared copy.
_OFFLINE_DOWNLOAD_CONFIG = tfds.download.DownloadConfig(try_download_gcs=False)

# `download_port` 443 means HTTPS, 80 plain HTTP, as in tfds's URLs.
_DatasetSpec = collections.namedtuple(
    "_DatasetSpec",
    ["download_host", "download_port", "object_mask_key", "object_mask_fn"],
)

SUPPORTED_DATASETS = {
    # Segmentations are the mean of several annotators, stored as 0-255;
    # foreground is where most annotators agree.
    "caltech_birds2011": _DatasetSpec(
        "data.caltech.edu", 443, "segmentation_mask", lambda m: m >= 128
    ),
    # Trimap: 1 = pet, 2 = background, 3 = the pet's outline. The outline
    # is part of the animal's silhouette, so foreground = pet + outline.
    "oxford_iiit_pet": _DatasetSpec(
        "thor.robots.ox.ac.uk",
        443,
        "segmentation_mask",
        lambda m: tf.logical_or(tf.equal(m, 1), tf.equal(m, 3)),
    ),
    "food101": _DatasetSpec("data.vision.ee.ethz.ch", 80, None, None),
    "cifar10": _DatasetSpec("www.cs.toronto.edu", 443, None, None),
}


class DatasetUnavailableError(RuntimeError):
    """Raised when a dataset is not prepared and cannot be downloaded."""


def network_available(host, port=443, timeout=_PROBE_TIMEOUT):
    """Tells whether `host` can be reached within `timeout` seconds.

    On port 443 the probe completes a TLS handshake that verifies the
    certificate for `host`, because sandboxes and firewalls often accept any
    TCP connection and only then fail the download; on other ports it opens
    a TCP connection. The probe, DNS lookup included, runs in a daemon thread
    so that the call returns within `timeout` even when resolution hangs.

    Args:
        host: str, the host name to reach.
        port: int, the TCP port.
        timeout: float, the most seconds to wait.

    Returns:
        bool, True when the host answered.

    Example:

    >>> network_available("localhost", port=1, timeout=0.5)
    False
    """
    reached = []

    def connect():
        try:
            address = (host, port)
            with socket.create_connection(address, timeout=timeout) as sock:
                if port == 443:
                    context = ssl.create_default_context()
                    with context.wrap_socket(sock, server_hostname=host):
                        pass
            reached.append(True)
        except OSError:  # Includes DNS, timeout and certificate errors.
            reached.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached and reached[0])


def _probe_target(spec):
    """`(host, port, proxy)` to probe before a download: the proxy that
    tfds's requests would use (the `*_proxy` environment variables), if
    any, else the download host itself (`proxy` is then `None`)."""
    scheme = "https" if spec.download_port == 443 else "http"
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(spec.download_host):
        return spec.download_host, spec.download_port, None
    parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    default_port = 443 if parsed.scheme == "https" else 80
    return parsed.hostname, parsed.port or default_port, proxy


def _decode(value, channels):
    # Examples are read with `SkipDecoding`, so images arrive as PNG/JPEG
    # bytes; synthetic examples may already be decoded.
    if value.dtype == tf.string:
        value = tf.io.decode_image(
            value, channels=channels, expand_animations=False
        )
    return value


def make_map_fn(image_size, backbone=None, object_mask_key=None,
                object_mask_fn=None):
    """Builds the function that turns a tfds example into model inputs.

    Args:
        image_size: int, side of the square output image and object mask.
        backbone: `None` or a backbone name, see `get_preprocessing`.
        object_mask_key: `None`, or the example key of the segmentation
            mask.
        object_mask_fn: function mapping the uint8 segmentation mask
            `(H, W, 1)` to a boolean foreground; required with
            `object_mask_key`.

    Returns:
        A function mapping an example dict with `"image"` (uint8 `(H, W, 3)`
        or its encoded bytes) and `"label"` to `(image, label)`, or to
        `(image, label, object_mask)` when `object_mask_key` is set.
        `image` is float32 `(image_size, image_size, 3)`, bilinearly resized
        then preprocessed; `label` is int32; `object_mask` is float32
        `(image_size, image_size, 1)` in `{0, 1}`, resized with nearest
        neighbour.

    Example:

    >>> map_fn = make_map_fn(32)
    >>> image, label = map_fn(
    ...     {"image": tf.zeros((64, 48, 3), tf.uint8), "label": 3}
    ... )
    >>> image.shape
    TensorShape([32, 32, 3])
    """
    if object_mask_key is not None and object_mask_fn is None:
        raise validation.invalid(
            "`make_map_fn`", "object_mask_fn", "a function when "
            f"`object_mask_key` is set (object_mask_key={object_mask_key!r})",
            None,
        )
    preprocess = get_preprocessing(backbone)
    size = (int(image_size), int(image_size))

    def map_fn(example):
        image = tf.cast(_decode(example["image"], channels=3), tf.float32)
        image = tf.image.resize(image, size, method="bilinear", antialias=True)
        image = preprocess(tf.clip_by_value(image, 0.0, 255.0))
        label = tf.cast(example["label"], tf.int32)
        if object_mask_key is None:
            return image, label
        foreground = object_mask_fn(
            _decode(example[object_mask_key], channels=1)
        )
        object_mask = tf.image.resize(
            tf.cast(foreground, tf.float32), size, method="nearest"
        )
        return image, label, object_mask

    return map_fn


def _pipeline(builder, split, map_fn, batch_size, shuffle, seed, decoders,
              order):
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=shuffle,
        decoders=decoders,
        # With an `order`, the files keep one (seeded) order: the examples'
        # order is then a function of the epoch alone.
        read_config=tfds.ReadConfig(
            shuffle_seed=seed,
            shuffle_reshuffle_each_iteration=order is None,
        ),
    )
    if shuffle and order is not None:
        dataset = order.shuffle(dataset, _SHUFFLE_BUFFER, seed)
    elif shuffle:
        dataset = dataset.shuffle(_SHUFFLE_BUFFER, seed=seed)
    dataset = dataset.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _shuffle_setting(split, shuffle, order, seed, caller):
    """`shuffle`, True for `"train"` splits when None, checked against an
    `order` (which needs shuffling and an int seed)."""
    if shuffle is None:
        shuffle = split.startswith("train")
    if order is None:
        return shuffle
    if not isinstance(order, EpochOrder):
        raise validation.invalid(
            caller, "order",
            "None or a keras_ersm.datasets.EpochOrder", order,
        )
    if not shuffle:
        raise validation.invalid(
            caller, "shuffle", "True (or None for a train split) "
            "when an `order` is given", shuffle,
            hint="Pass shuffle=True, or no `order`.",
        )
    # The order is a function of the seed: None (nondeterminism) is refused.
    validation.check_integer(f"{caller} with an `order`", "seed", seed,
                             minimum=0)
    return shuffle


def _check_batch_size(batch_size, caller):
    if batch_size is not None and int(batch_size) < 1:
        raise validation.invalid(caller, "batch_size",
                                 "None or an integer >= 1", batch_size)


def _benchmark_config(image_size, config):
    if config is not None:
        return config
    # The smallest built-in config that does not need upsampling.
    configs = sorted(
        benchmark.ErsmBenchmark.BUILDER_CONFIGS, key=lambda c: c.image_size
    )
    for candidate in configs:
        if candidate.image_size >= image_size:
            return candidate.name
    return configs[-1].name


def _benchmark_builder(image_size, config, data_dir, caller):
    """The benchmark's tfds builder that `load_benchmark(image_size,
    config=config, data_dir=data_dir)` reads; raises `ValueError` if
    `data_dir` holds a build of that config name with other settings."""
    builder = tfds.builder(
        benchmark.BENCHMARK_NAME,
        config=_benchmark_config(image_size, config),
        data_dir=data_dir,
    )
    # tfds finds a build by config name and version only.
    built = dict(builder.info.metadata)
    wanted = builder.builder_config.parameters()
    if built != wanted:
        raise ValueError(
            f"{caller}: {builder.data_dir} holds a build of config "
            f"{builder.builder_config.name!r} with {built}, not the "
            f"requested {wanted}. Give the config another name, or delete "
            "that folder to rebuild it."
        )
    return builder


def benchmark_is_built(image_size=64, *, data_dir=None, config=None):
    """Whether the benchmark that `load_benchmark` reads for `image_size`
    (and `config`) is already rendered in `data_dir`.

    Args:
        image_size, data_dir, config: as for `load_benchmark`.

    Returns:
        bool: False when the next `load_benchmark` or `build_benchmark` of
        these arguments renders it first.
    """
    builder = _benchmark_builder(image_size, config, data_dir,
                                 "`benchmark_is_built`")
    # What `download_and_prepare` checks (`is_prepared` logs a warning
    # about a folder that does not exist).
    return builder.data_path.exists()


def build_benchmark(image_size=64, *, data_dir=None, config=None,
                    verbose=False):
    """Renders the benchmark that `load_benchmark` reads for `image_size`
    (and `config`) into `data_dir`, unless it is built there already.

    `load_benchmark` renders it too when it must; this is for saying so
    beforehand (`ersm` makes it a phase of its own).

    Args:
        image_size, data_dir, config: as for `load_benchmark`.
        verbose: bool, print one line saying what is rendered, and where,
            before rendering.

    Returns:
        The folder of the build.
    """
    builder = _benchmark_builder(image_size, config, data_dir,
                                 "`build_benchmark`")
    if not builder.data_path.exists():
        if verbose:
            print(f"Rendering {_benchmark_contents(builder.builder_config)} "
                  f"into {builder.data_dir}", flush=True)
        builder.download_and_prepare(
            download_config=_OFFLINE_DOWNLOAD_CONFIG
        )
    return builder.data_dir


def _benchmark_contents(config):
    """'5000 images of 32x32 (2000 train, ...) from ...' for `config`."""
    counts = {"train": config.num_train, "test": config.num_test,
              "test_shuffled": config.num_test,
              "pretrain": config.num_pretrain,
              "validation": config.num_validation}
    size = config.image_size
    return (
        f"{sum(counts.values())} images of {size}x{size} ("
        + ", ".join(f"{count} {split}" for split, count in counts.items())
        + ") from scikit-learn's digits and scikit-image's photos"
    )


def load_benchmark(split="train", batch_size=32, image_size=64, *,
                   backbone=None, with_object_masks=False,
                   with_background=False, data_dir=None, shuffle=None, seed=0,
                   config=None, order=None):
    """Loads the ERSM benchmark as a batched, prefetched `tf.data` pipeline.

    The benchmark is rendered locally, without network, into `data_dir` the
    first time (about 30 s for the default config on 2 CPU cores) and read
    from tfds's cache afterwards.

    Args:
        split: str, `"train"`, `"test"`, `"test_shuffled"`, `"pretrain"`
            or `"validation"`, or a tfds slice of them such as
            `"train[:10%]"`.
        batch_size: int, or `None` for unbatched examples.
        image_size: int, side of the returned square images.
        backbone: `None` for images scaled to `[0, 1]`, or a backbone name
            whose `keras.applications` preprocessing to apply (see
            `get_preprocessing`).
        with_object_masks: bool, whether to also return the ground-truth
            object masks.
        with_background: bool, whether the target is `(label, background)`,
            the digit and the background id (for two-headed pre-training;
            not with `with_object_masks`).
        data_dir: str, the tfds data directory. Defaults to tfds's own
            (the `TFDS_DATA_DIR` environment variable, else
            `~/tensorflow_datasets`).
        shuffle: bool; defaults to True for `"train"` splits only.
        seed: int, the shuffling seed.
        config: `None`, a config name (`"64"`, `"32"`) or an
            `ErsmBenchmarkConfig`. `None` picks the smallest built-in config
            of at least `image_size`; images are resized when sizes differ.
        order: `None`, or a `keras_ersm.datasets.EpochOrder`, also passed
            to `fit`'s callbacks: each epoch (one whole pass: no
            `steps_per_epoch`, no `.repeat()`) is then shuffled in an order
            set by `seed` and the epoch number, the same in every process
            (for exact resumption) and for every model trained on it. Needs
            `shuffle` and an int `seed` >= 0. `None`: `tf.data` reshuffles
            every pass from a stream that starts anew in each process.

    Returns:
        A `tf.data.Dataset` of `(image, label)`, or of
        `(image, label, object_mask)` with `with_object_masks=True` (meant
        for evaluation loops: `model.fit` would read a third element as
        sample weights), or of `(image, (label, background))` with
        `with_background=True`. `image` is float32
        `(batch, image_size, image_size, 3)`, `label` int32 `(batch,)`,
        `object_mask` float32 `(batch, image_size, image_size, 1)` in
        `{0, 1}`.

    Example:

    The first call renders the benchmark (minutes), so this example is
    not run by the tests:

    >>> test = load_benchmark("test_shuffled", 64, 32,
    ...                       with_object_masks=True)  # doctest: +SKIP
    >>> for images, labels, object_masks in test.take(1):  # doctest: +SKIP
    ...     print(images.shape, object_masks.shape)
    (64, 32, 32, 3) (64, 32, 32, 1)
    """
    _check_batch_size(batch_size, "`load_benchmark`")
    shuffle = _shuffle_setting(split, shuffle, order, seed, "`load_benchmark`")
    if with_object_masks and with_background:
        raise validation.invalid(
            "`load_benchmark`", "with_background",
            "False when `with_object_masks` is True", with_background,
        )
    map_fn = make_map_fn(
        image_size,
        backbone,
        object_mask_key="object_mask" if with_object_masks else None,
        object_mask_fn=(lambda m: m > 0) if with_object_masks else None,
    )
    if with_background:
        map_image_and_label = map_fn

        def map_fn(example):
            image, label = map_image_and_label(example)
            return image, (label, tf.cast(example["background"], tf.int32))
    builder = _benchmark_builder(image_size, config, data_dir,
                                 "`load_benchmark`")
    builder.download_and_prepare(download_config=_OFFLINE_DOWNLOAD_CONFIG)
    decoders = {"image": tfds.decode.SkipDecoding()}
    if with_object_masks:
        decoders["object_mask"] = tfds.decode.SkipDecoding()
    return _pipeline(
        builder, split, map_fn, batch_size, shuffle, seed, decoders, order
    )


def load(
    name,
    split="train",
    image_size=224,
    batch_size=32,
    backbone=None,
    *,
    data_dir=None,
    with_object_masks=False,
    shuffle=None,
    seed=0,
    order=None,
):
    """Loads one of the paper's datasets through tfds, failing fast offline.

    When the dataset is not prepared in `data_dir`, its download host is
    probed for 2 seconds first: if it is unreachable a
    `DatasetUnavailableError` is raised at once, instead of letting tfds
    retry its download for minutes.

    Args:
        name: str, one of `SUPPORTED_DATASETS`: `"caltech_birds2011"`,
            `"oxford_iiit_pet"`, `"food101"`, `"cifar10"`.
        split: str, a tfds split of that dataset, e.g. `"train"`, `"test"`
            (`"validation"` for food101), or a slice like `"train[:10%]"`.
        image_size: int, side of the returned square images.
        batch_size: int, or `None` for unbatched examples.
        backbone: `None` for images scaled to `[0, 1]`, or a backbone name
            whose `keras.applications` preprocessing to apply (see
            `get_preprocessing`).
        data_dir: str, the tfds data directory. Defaults to tfds's own
            (the `TFDS_DATA_DIR` environment variable, else
            `~/tensorflow_datasets`).
        with_object_masks: bool, whether to also return the object
            (foreground) masks; only for `"oxford_iiit_pet"` (pet and its
            outline in the trimap) and `"caltech_birds2011"` (majority of
            annotators).
        shuffle: bool; defaults to True for `"train"` splits only.
        seed: int, the shuffling seed.
        order: `None` or a `keras_ersm.datasets.EpochOrder`, as in
            `load_benchmark`.

    Returns:
        A `tf.data.Dataset` of `(image, label)`, or of
        `(image, label, object_mask)` with `with_object_masks=True`, with
        the dtypes and shapes of `load_benchmark`.

    Raises:
        DatasetUnavailableError: when the dataset is not prepared and its
            download host is unreachable.

    Example:

    The dataset must be prepared (downloaded) first, so this example is
    not run by the tests:

    >>> pets = load(
    ...     "oxford_iiit_pet", "test", 224, 32, backbone="ResNet50",
    ...     with_object_masks=True,
    ... )  # doctest: +SKIP
    """
    if name not in SUPPORTED_DATASETS:
        raise validation.invalid(
            "`load`", "name", f"one of {', '.join(SUPPORTED_DATASETS)}", name,
        )
    spec = SUPPORTED_DATASETS[name]
    if with_object_masks and spec.object_mask_key is None:
        segmented = [n for n, s in SUPPORTED_DATASETS.items()
                     if s.object_mask_key]
        raise validation.invalid(
            "`load`", "with_object_masks", f"False for {name!r}, which has "
            "no segmentation", with_object_masks,
            hint=f"Datasets with object masks: {', '.join(segmented)}.",
        )
    _check_batch_size(batch_size, "`load`")
    shuffle = _shuffle_setting(split, shuffle, order, seed, "`load`")
    map_fn = make_map_fn(
        image_size,
        backbone,
        object_mask_key=spec.object_mask_key if with_object_masks else None,
        object_mask_fn=spec.object_mask_fn if with_object_masks else None,
    )
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        host, port, proxy = _probe_target(spec)
        if not network_available(host, port):
            root = os.path.expanduser(
                data_dir or tfds.core.constants.get_default_data_dir()
            )
            through = f" through the proxy {proxy}" if proxy else ""
            raise DatasetUnavailableError(
                f"`load` cannot find the tfds dataset {name!r} prepared in "
                f"data_dir={root!r} (searched {builder.data_dir!r}), and its "
                f"download host {spec.download_host} is unreachable"
                f"{through}. To "
                "prepare it, run on a machine with internet access:\n"
                '    python -c "import tensorflow_datasets as tfds; '
                f"tfds.builder('{name}', data_dir='{root}')"
                '.download_and_prepare()"\n'
                f"then copy {os.path.join(root, name)!r} to this machine, or "
                "pass `data_dir` (or set TFDS_DATA_DIR) to a directory that "
                "contains it."
            )
        builder.download_and_prepare()
    decoders = {"image": tfds.decode.SkipDecoding()}
    if with_object_masks:
        decoders[spec.object_mask_key] = tfds.decode.SkipDecoding()
    return _pipeline(
        builder, split, map_fn, batch_size, shuffle, seed, decoders, order
    )
