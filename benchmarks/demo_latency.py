"""
Does the web demo answer as fast as the command line? Times `diffusers-dawn generate` and a `gradio_client` call to
`diffusers-dawn demo` on the same inputs and settings, alternately, and prints the ratios.

    python benchmarks/demo_latency.py [--model NAME] [--steps 20] [--repeats 3] [--device cpu] [--json]

Both run in their own processes, one at a time (the idle server does not compete with the command). The model is
the demo's default (the first embedded model, else `tiny-random`) and the inputs are the bundled portrait and speech
unless given. Per repeat it records:

- `cli_wall`: the whole `generate` command (Python start, imports, model load, generation, MP4);
- `cli_generation`: the generation and MP4 alone, as the command prints it ("generated in X s");
- `demo_wall`: the API call seen by the client (upload, queue, generation, MP4, download), model already loaded;
- `demo_generation`: the generation and MP4 alone, as the demo reports it.

`demo_wall / cli_generation` is the answer time of the demo against the command's own work with the model loaded
(the demo loads each model once, so a visitor never waits for the load); `demo_generation / cli_generation` checks
that the same work takes the same time in both.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from diffusers_dawn.cli import DEFAULT_MODEL, default_inputs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the demo did not answer at {url} within {timeout:.0f} s")


def time_cli(args, output: str):
    command = [sys.executable, "-m", "diffusers_dawn.cli", "generate", "--model", args.model, "--image", args.image]
    command += ["--audio", args.audio, "--output", output, "--steps", str(args.steps), "--seed", str(args.seed)]
    command += ["--device", args.device] if args.device else []
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"generate failed: {result.stderr.strip().splitlines()[-1]}")
    return wall, float(re.search(r"generated in ([0-9.]+) s", result.stdout).group(1))


def time_demo(client, args):
    from gradio_client import handle_file

    started = time.perf_counter()
    _, seconds, _ = client.predict(
        portrait=handle_file(args.image), speech=handle_file(args.audio), model=args.model, steps=args.steps,
        seed=args.seed, api_name="/generate",
    )  # fmt: skip
    return time.perf_counter() - started, float(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name, folder or Hub id (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", help="torch device for both (default: cuda when available, else cpu)")
    parser.add_argument("--image", help="portrait (default: the model's own, as for `generate`)")
    parser.add_argument("--audio", help="speech (default: the model's own, as for `generate`)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    default_image, default_audio = default_inputs(args.model)
    args.image = args.image or default_image
    args.audio = args.audio or default_audio

    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "diffusers_dawn.cli", "demo", "--model", args.model, "--port", str(port)]
    command += ["--device", args.device] if args.device else []
    environment = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_serving(url, server)
            client = Client(url, verbose=False, download_files=folder)
            first_wall, _ = time_demo(client, args)  # loads the model: what only the first visitor waits for
            runs = []
            for repeat in range(args.repeats):
                cli_wall, cli_generation = time_cli(args, os.path.join(folder, f"cli-{repeat}.mp4"))
                demo_wall, demo_generation = time_demo(client, args)
                runs.append(dict(cli_wall=cli_wall, cli_generation=cli_generation, demo_wall=demo_wall,
                                 demo_generation=demo_generation))  # fmt: skip
                if not args.json:
                    print(" ".join(f"{key}={value:.2f}s" for key, value in runs[-1].items()), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)

    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    report = dict(
        model=args.model,
        steps=args.steps,
        repeats=args.repeats,
        demo_first_call_wall=first_wall,
        **{f"median_{key}": value for key, value in median.items()},
        demo_wall_over_cli_generation=median["demo_wall"] / median["cli_generation"],
        demo_generation_over_cli_generation=median["demo_generation"] / median["cli_generation"],
        demo_wall_over_cli_wall=median["demo_wall"] / median["cli_wall"],
    )
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
