"""
How long `diffusers-dawn` takes to answer without doing any work: `--help`, a subcommand's `--help` and an argument
error, each in a fresh interpreter (median of N runs), next to a bare interpreter and `import torch` for scale.

    python benchmarks/cli_startup.py [--runs 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "diffusers-dawn --help": ["-m", "diffusers_dawn.cli", "--help"],
    "diffusers-dawn generate --help": ["-m", "diffusers_dawn.cli", "generate", "--help"],
    "diffusers-dawn generate --steps 0": [
        "-m", "diffusers_dawn.cli", "generate", "--output", os.path.join(tempfile.gettempdir(), "x.mp4"),
        "--steps", "0",
    ],
}  # fmt: skip


def seconds(arguments, runs):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, *arguments], capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results = {name: seconds(arguments, args.runs) for name, arguments in COMMANDS.items()}
    baseline = results["import torch"]
    for name, value in results.items():
        print(f"{name:40s} {value:6.2f} s  ({value / baseline:4.2f} x import torch)")
    print(json.dumps({name: round(value, 3) for name, value in results.items()}))


if __name__ == "__main__":
    main()
