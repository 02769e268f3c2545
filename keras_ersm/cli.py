"""The `ersm` command line: parse arguments, call the library.

    ersm demo [--quick] [--resume]  baseline vs ERSM on the offline benchmark
    ersm train   --output DIR       train both models on a dataset
    ersm evaluate --output DIR      measure every claim, write the report
    ersm export  --output DIR       SavedModel of the trained ERSM model
"""

import argparse
import dataclasses
import json
import os
import sys

DEMO_OUTPUT = "ersm_demo"


def _choice(valid, what):
    by_lower = {name.lower(): name for name in valid}

    def parse(value):
        if value.lower() not in by_lower:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {value!r}; choose from: "
                + ", ".join(valid)
            )
        return by_lower[value.lower()]

    return parse


def _add_experiment_options(parser, defaults):
    from keras_ersm import backbones
    from keras_ersm.experiment import DATASETS

    def option(name, **kwargs):
        field = name.lstrip("-").replace("-", "_")
        kwargs.setdefault("default", getattr(defaults, field))
        if "help" in kwargs:
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(name, **kwargs)

    option("--dataset", type=_choice(DATASETS, "dataset"),
           help=f"one of {', '.join(DATASETS)}")
    option("--backbone", type=_choice(sorted(backbones.BACKBONES), "backbone"),
           help=f"one of {', '.join(sorted(backbones.BACKBONES))}")
    option("--feature-layer", help="cut the backbone at this layer; 'none' "
           "for its last feature map. The default is a MobileNetV2 layer: "
           "with another --backbone pass 'none' or one of its layers (an "
           "unknown layer is an error that lists the layers ending each "
           "stage)", type=lambda v: None if v.lower() == "none" else v)
    option("--weights", type=lambda v: None if v.lower() == "none" else v,
           help="'none' (from scratch), 'imagenet' or a weights file")
    option("--freeze-backbone", action=argparse.BooleanOptionalAction,
           help="freeze the backbone (the authors' protocol)")
    option("--image-size", type=int, help="square input side")
    option("--batch-size", type=int, help="batch size")
    option("--epochs", type=int, help="training epochs")
    option("--train-examples", type=int, help="use the first N training "
           "examples")
    option("--test-examples", type=int, help="use the first N test examples")
    option("--learning-rate", type=float, help="AdamW initial learning rate")
    option("--weight-decay", type=float, help="AdamW weight decay")
    option("--formulation", choices=("reference", "coherent"),
           help="EnergyMask formulation")
    option("--initial-keep", type=float, help="keep value of every token "
           "at initialisation")
    option("--patch-size", type=int, help="token side in feature positions")
    option("--unary-weight", type=float, help="lambda")
    option("--pairwise-weight", type=float, help="gamma")
    option("--energy-loss-weight", type=float, help="weight of the energy "
           "loss")
    option("--temperature", type=float, help="T")
    option("--coupling", type=float, help="beta (coherent)")
    option("--mean-field-steps", type=int, help="mean-field sweeps "
           "(coherent)")
    option("--deletion-steps", type=int, help="points per deletion curve")
    option("--seed", type=int, help="seed of everything random")


def _config_from(args, base):
    fields = {f.name for f in dataclasses.fields(base)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return dataclasses.replace(base, **values)


def build_parser():
    from keras_ersm.experiment import ExperimentConfig

    parser = argparse.ArgumentParser(
        prog="ersm",
        description="Energy-Regularized Spatial Masking: train a baseline "
        "and an ERSM model side by side and measure the paper's claims.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="the whole study on the built-in offline benchmark",
        description="Train a baseline and an ERSM model on the offline "
        "benchmark, evaluate every claim, export, and write a report.",
    )
    demo.add_argument("--quick", action="store_true",
                      help="tiny sizes (about two minutes)")
    demo.add_argument("--formulation", choices=("reference", "coherent"),
                      default="reference", help="(default: %(default)s)")
    demo.add_argument("--output", default=DEMO_OUTPUT,
                      help="report folder (default: %(default)s)")
    demo.add_argument("--resume", action="store_true",
                      help="continue an interrupted demo in --output (with "
                      "the same --quick and --formulation)")

    train = commands.add_parser(
        "train", help="train a baseline and an ERSM model",
        description="Train both models; --resume continues a killed run.",
    )
    _add_experiment_options(train, ExperimentConfig())
    train.add_argument("--output", required=True, help="run folder")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --output")

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
    # Usage errors found after parsing print the subcommand's usage.
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)
    return parser


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


def _run(parser, args, experiment):
    if args.command == "demo":
        make = experiment.quick_config if args.quick else (
            experiment.ExperimentConfig
        )
        config = make(formulation=args.formulation)
        metrics = experiment.run_experiment(config, args.output,
                                            resume=args.resume)
        _print_claims(metrics)
        print(f"\nReport: {os.path.join(args.output, 'report.md')}")
        return 0
    if args.command == "train":
        # Invalid option values are usage errors (exit 2), found before
        # anything is written or loaded.
        try:
            config = _config_from(args, experiment.ExperimentConfig())
            experiment.check_trainable(config)
        except ValueError as error:
            parser.error(str(error))
        experiment.train_pair(config, args.output, resume=args.resume)
        print(f"Trained models in {args.output}; next: "
              f"ersm evaluate --output {args.output}")
        return 0
    if args.command == "evaluate":
        metrics = experiment.evaluate_run(args.output)
        _print_claims(metrics)
        return 0
    path = args.path or os.path.join(args.output, "saved_model")
    experiment.export_run(args.output, path)
    print(json.dumps({"saved_model": path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
