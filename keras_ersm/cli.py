"""The `ersm` command line."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="ersm", description="Energy-Regularized Spatial Masking."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="Reproduce the paper's claims offline.")
    parser.parse_args(argv)
    print(
        "ersm demo: not yet available; it lands with the evaluation issue.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
