"""The `ersm` command line: parse arguments, call the library.

    ersm demo [--quick] [--resume]  baseline vs ERSM on the offline benchmark
    ersm train   --output DIR       train both models on a dataset
    ersm evaluate --output DIR      measure every claim, write the report
    ersm export  --output DIR       SavedModel of the trained ERSM model
    ersm summarize RUN [RUN ...]    mean ± std over seeds, targets per seed

Each command announces its phases ("[3/13] Training the ERSM model") with
their times and shows Keras progress bars; `--quiet` prints only the
results. `ersm` itself (`keras_ersm_launcher`) keeps TensorFlow's C++
logging off the console unless `--verbose` is given.
"""

import argparse
import importlib.util
import json
import os
import sys

DEMO_OUTPUT = "ersm_demo"


def _add_experiment_options(parser):
    from keras_ersm.experiment import PRESETS
    from keras_ersm.experiment.config import command_line_arguments

    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="learned",
        help="the configuration the other options change: 'learned' (the "
        "mask that learns, on a frozen backbone pre-trained on the "
        "benchmark), 'reference' (the authors' energy on that backbone), "
        "'authors' (the same, trained as the authors' code: bias frozen at "
        "+6, batch 32, learning rate 1e-3 decayed once per epoch), "
        "'scratch' (MobileNetV2 from scratch with the authors' energy) "
        "(default: %(default)s)",
    )
    for flag, kwargs in command_line_arguments():
        # Only options given on the command line change the preset.
        parser.add_argument(flag, default=argparse.SUPPRESS, **kwargs)


def _config_from(args, experiment):
    fields = experiment.ExperimentConfig().to_dict()
    values = {k: v for k, v in vars(args).items() if k in fields}
    return experiment.ExperimentConfig.from_preset(args.preset, **values)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ersm",
        description="Energy-Regularized Spatial Masking: train a baseline "
        "and an ERSM model side by side and measure the paper's claims.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo(commands)
    _add_train(commands)
    _add_run_folder_commands(commands)
    _add_summarize(commands)
    for name in ("demo", "train"):
        commands.choices[name].add_argument(
            "--tensorboard", metavar="DIR",
            help="write TensorBoard logs of both trainings to DIR, with the "
            "ERSM model's masks of a few test images each epoch (needs the "
            "tensorboard package)",
        )
    for command in commands.choices.values():
        command.add_argument("--quiet", action="store_true",
                             help="print only the results, no phases or "
                             "progress bars")
        command.add_argument("--verbose", action="store_true",
                             help="let TensorFlow log to the console too")
        # Usage errors found after parsing print the subcommand's usage.
        command.set_defaults(command_parser=command)
    return parser


def _add_demo(commands):
    from keras_ersm.experiment import PRESETS

    demo = commands.add_parser(
        "demo", help="the whole study on the built-in offline benchmark",
        description="Train a baseline and an ERSM model on the offline "
        "benchmark, evaluate every claim, export, and write a report.",
    )
    demo.add_argument("--quick", action="store_true",
                      help="tiny sizes (a smoke test of a few minutes)")
    demo.add_argument("--preset", choices=tuple(PRESETS), default="learned",
                      help="see `ersm train --help` (default: %(default)s)")
    demo.add_argument("--output", default=DEMO_OUTPUT,
                      help="report folder (default: %(default)s)")
    demo.add_argument("--resume", action="store_true",
                      help="continue an interrupted demo in --output (with "
                      "the same --quick and --preset)")


def _add_train(commands):
    train = commands.add_parser(
        "train", help="train a baseline and an ERSM model",
        description="Train both models; --resume continues a killed run.",
    )
    _add_experiment_options(train)
    train.add_argument("--output", required=True, help="run folder")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --output")


def _add_run_folder_commands(commands):
    """`ersm evaluate` and `ersm export`, on a run folder of `ersm
    train`."""
    for name, text in (
        ("evaluate", "measure every claim on a trained run folder and "
                     "write its report"),
        ("export", "export the run's ERSM model as a SavedModel for "
                   "TensorFlow Serving"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--output", required=True,
                             help="run folder written by `ersm train`")
    commands.choices["export"].add_argument(
        "--path", help="SavedModel folder (default: OUTPUT/saved_model)"
    )


def _add_summarize(commands):
    summarize = commands.add_parser(
        "summarize", help="aggregate evaluated run folders over seeds",
        description="One table of mean ± std over seeds per configuration "
        "(runs that differ only in --seed form one), and the targets judged "
        "per seed and with the spread across seeds.",
    )
    summarize.add_argument("runs", nargs="+", metavar="RUN",
                           help="folders of `ersm train` + `ersm evaluate`")
    summarize.add_argument("--save", metavar="FILE",
                           help="also write the table to FILE (Markdown) "
                           "and FILE.json")


def _print_claims(metrics):
    print("\nERSM vs baseline, claim by claim:")
    for claim in metrics["claims"]:
        print(f"  [{claim['verdict']}] {claim['claim']}: {claim['evidence']}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    from keras_ersm import experiment
    from keras_ersm.backbones import WeightsDownloadError
    from keras_ersm.datasets import DatasetUnavailableError

    # An unusable output folder is a usage error (exit 2), found before
    # anything is written.
    parser = args.command_parser
    try:
        return _run(parser, args, experiment)
    except experiment.RunFolderError as error:
        parser.error(str(error))
    except (DatasetUnavailableError, WeightsDownloadError) as error:
        # Not a usage error (exit 1), and the message says what to do: no
        # traceback.
        parser.exit(1, f"{parser.prog}: error: {error}\n")


def _quiet_progress(args):
    """No progress bars of tensorflow-datasets (preparing a dataset) with
    `--quiet` or in a log file, where each redraw would add a line."""
    if args.quiet or not sys.stderr.isatty():
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()


def _run(parser, args, experiment):
    _quiet_progress(args)
    if getattr(args, "tensorboard", None) is not None and (
        importlib.util.find_spec("tensorboard") is None
    ):
        parser.error("--tensorboard needs the tensorboard package: pip "
                     "install tensorboard (or keras-ersm[tensorboard]).")
    return _COMMANDS[args.command](parser, args, experiment)


def _phases(count, args):
    from keras_ersm.progress import Phases

    return Phases(count, quiet=args.quiet)


def _demo(parser, args, experiment):
    config = (experiment.quick_config(args.preset) if args.quick
              else experiment.ExperimentConfig.from_preset(args.preset))
    phases = _phases(experiment.count_phases(config, "demo"), args)
    metrics = experiment.run_experiment(
        config, args.output, resume=args.resume, verbose=phases.verbose,
        phases=phases, tensorboard=args.tensorboard,
    )
    _print_claims(metrics)
    if not args.quiet:
        print(f"\nReport: {os.path.join(args.output, 'report.md')}")
    return 0


def _train(parser, args, experiment):
    # Invalid option values are usage errors (exit 2), found before
    # anything is written or loaded.
    try:
        config = _config_from(args, experiment)
        experiment.check_trainable(config)
    except ValueError as error:
        parser.error(str(error))
    phases = _phases(experiment.count_phases(config, "train"), args)
    experiment.train_pair(config, args.output, resume=args.resume,
                          verbose=phases.verbose, phases=phases,
                          tensorboard=args.tensorboard)
    if not args.quiet:
        print(f"Trained models in {args.output}; next: "
              f"ersm evaluate --output {args.output}")
    return 0


def _evaluate(parser, args, experiment):
    config = experiment.load_config(args.output)
    metrics = experiment.evaluate_run(
        args.output,
        phases=_phases(experiment.count_phases(config, "evaluate"), args),
    )
    _print_claims(metrics)
    return 0


def _export(parser, args, experiment):
    path = args.path or os.path.join(args.output, "saved_model")
    experiment.export_run(args.output, path, phases=_phases(1, args))
    print(json.dumps({"saved_model": path}))
    return 0


def _summarize(parser, args, experiment):
    from keras_ersm.report import summary

    try:
        result = summary.summarize_runs(args.runs)
    except ValueError as error:
        parser.error(str(error))
    table = summary.summary_markdown(result)
    if args.save:
        with open(args.save, "w") as file:
            file.write(table)
        with open(args.save + ".json", "w") as file:
            json.dump(result, file, indent=1)
    print(table)
    return 0


# What each command runs: (parser, args, experiment) -> exit status.
_COMMANDS = {
    "demo": _demo,
    "train": _train,
    "evaluate": _evaluate,
    "export": _export,
    "summarize": _summarize,
}


if __name__ == "__main__":
    sys.exit(main())
