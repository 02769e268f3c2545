"""Side-by-side experiments: a baseline and an ERSM model, trained and measured.

`run_experiment` is what `ersm demo` and `ersm train` run: it builds two
classifiers on the same backbone architecture from the same seed — one
without and one with an `EnergyMask` before the pooled head — trains both on
the same data, measures every claim of the paper on both (see
`keras_ersm.evaluation`), exports the ERSM model and writes the report
(see `keras_ersm.report`).

One job a module:

* `config`: `ExperimentConfig`, `PRESETS`, `quick_config`.
* `data`: the datasets a run may use and its splits (`load_data`).
* `pair`: the backbone and the model pair (`build_pair`, `check_trainable`).
* `training`: `train` and `train_pair`, resumable after a kill.
* `run_folder`: what a run folder holds and may be used for
  (`RunFolderError`, `load_config`, backups, histories).
* `evaluate`: the measurements and the report (`evaluate_run`).
* `phases`: the phases a command announces (`count_phases`).
* `run`: `run_experiment` (`ersm demo`) and `export_run` (`ersm export`).
"""

from keras_ersm.experiment.config import BENCHMARK_WEIGHTS
from keras_ersm.experiment.config import PRESETS
from keras_ersm.experiment.config import ExperimentConfig
from keras_ersm.experiment.config import quick_config
from keras_ersm.experiment.data import DATASETS
from keras_ersm.experiment.data import NUM_CLASSES
from keras_ersm.experiment.data import OBJECT_MASK_DATASETS
from keras_ersm.experiment.data import TEST_SPLITS
from keras_ersm.experiment.data import VALIDATION_SPLITS
from keras_ersm.experiment.data import load_data
from keras_ersm.experiment.evaluate import evaluate_and_report
from keras_ersm.experiment.evaluate import evaluate_pair
from keras_ersm.experiment.evaluate import evaluate_run
from keras_ersm.experiment.evaluate import example_maps
from keras_ersm.experiment.evaluate import grey_fill_value
from keras_ersm.experiment.pair import build_backbone
from keras_ersm.experiment.pair import build_pair
from keras_ersm.experiment.pair import check_trainable
from keras_ersm.experiment.pair import pretrain_backbone
from keras_ersm.experiment.phases import count_phases
from keras_ersm.experiment.run import export_run
from keras_ersm.experiment.run import run_experiment
from keras_ersm.experiment.run_folder import RESULT_FILES
from keras_ersm.experiment.run_folder import RunFolderError
from keras_ersm.experiment.run_folder import load_config
from keras_ersm.experiment.run_folder import make_folder
from keras_ersm.experiment.run_folder import read_history
from keras_ersm.experiment.run_folder import save_config
from keras_ersm.experiment.training import train
from keras_ersm.experiment.training import train_pair
