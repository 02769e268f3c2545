"""Datasets for ERSM: an offline benchmark with ground truth, and tfds loaders.

Importing this package registers the `ersm_benchmark` tfds builder, so that
`tfds.load("ersm_benchmark/32", data_dir=...)` works afterwards.
"""

from keras_ersm.datasets.benchmark import BENCHMARK_NAME
from keras_ersm.datasets.benchmark import ErsmBenchmark
from keras_ersm.datasets.benchmark import ErsmBenchmarkConfig
from keras_ersm.datasets.epoch_order import EpochOrder
from keras_ersm.datasets.loaders import SUPPORTED_DATASETS
from keras_ersm.datasets.loaders import DatasetUnavailableError
from keras_ersm.datasets.loaders import benchmark_is_built
from keras_ersm.datasets.loaders import build_benchmark
from keras_ersm.datasets.loaders import load
from keras_ersm.datasets.loaders import load_benchmark
from keras_ersm.preprocessing import SUPPORTED_BACKBONES
from keras_ersm.preprocessing import get_preprocessing
