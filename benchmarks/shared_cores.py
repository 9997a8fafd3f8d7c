"""Sharing the cores: `ganforge train` alone, two side by side, and beside a CPU-bound job.

    python -m benchmarks.shared_cores [--data digits mnist] [--seconds 24] [--out FILE]

Each scenario starts real ``ganforge train`` processes (the params.yaml defaults, the FID
probe off so that every second is training, ``train.max_minutes`` = ``--seconds``) on a
prepared copy of the data, and reads the images/s each wrote to its summary.json:

- ``alone``: one training on an idle machine (the reference);
- ``pair``: two trainings started together;
- ``beside_busy``: one training beside a single-threaded Python busy loop;

each under two thread policies:

- ``fixed``: ``OMP_NUM_THREADS`` = the usable cores, which is what ``threads`` did before
  (every process took every core, whatever else ran);
- ``auto``: no ``OMP_NUM_THREADS``: ganforge's threads follow the free cores
  (ganforge.core.fastpath.ThreadGovernor), measured at start and every 2 s.

Printed and written (``--out``): images/s of every process, and each shared scenario as a
share of ``alone`` under the same policy (the targets: a pair each >= 70%, beside a busy
job >= 60%). The machine must be otherwise idle: run nothing else beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganforge.core.cores import usable_cores

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("GANFORGE_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
DATA = {  # --data name -> prepare overrides
    "digits": ["prepare.source=digits"],
    "mnist": ["prepare.source=mnist-idx", f"prepare.path={MNIST_DIR}", "prepare.image_size=28"],
}
BUSY_LOOP = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass"


def _ganforge(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ganforge", *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def prepare(work: Path, data: str) -> list[str]:
    """Prepare ``data`` once into ``work``; returns the --set overrides every training uses."""
    sets = [a for s in DATA[data] for a in ("--set", s)]
    proc = _ganforge(
        "prepare", *sets, "--out", str(work / "prepared"), cwd=ROOT, env=dict(os.environ)
    )
    if proc.wait() != 0:
        sys.exit(f"prepare {data} failed: {proc.stderr.read().decode()[-2000:]}")
    return sets


def train_together(
    work: Path, sets: list[str], n: int, seconds: float, env: dict, busy: bool
) -> list[float]:
    """``n`` trainings started at once (and a busy loop beside them): each one's images/s."""
    over = ["--set", "train.fid_samples=0", "--set", f"train.max_minutes={seconds / 60:.4f}",
            "--set", "train.steps=1000000", "--set", "train.sample_every=1000000",
            "--set", "train.checkpoint_every=1000000", "--no-progress"]  # fmt: skip
    loop = None
    if busy:  # started first, running for the whole scenario
        code = BUSY_LOOP.format(s=seconds + 60)
        loop = subprocess.Popen([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "1"})
        time.sleep(0.5)
    procs, outs = [], []
    for i in range(n):
        outs.append(work / f"runs{i}")
        args = [
            "train",
            "--params",
            str(ROOT / "params.yaml"),
            *sets,
            *over,
            "--data",
            str(work / "prepared"),
            "--out",
            str(outs[i]),
        ]
        procs.append(_ganforge(*args, cwd=work, env=env))
    try:
        for proc in procs:
            if proc.wait() != 0:
                sys.exit(f"train failed: {proc.stderr.read().decode()[-2000:]}")
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
    return [json.loads((o / "main" / "summary.json").read_text())["img_per_s"] for o in outs]


def run(data: str, seconds: float) -> dict:
    cores = usable_cores()
    policies = {"fixed": {"OMP_NUM_THREADS": str(cores)}, "auto": {}}
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = prepare(work, data)
        for policy, extra in policies.items():
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | extra
            row = {}
            for scenario, n, busy in (
                ("alone", 1, False),
                ("pair", 2, False),
                ("beside_busy", 1, True),
            ):
                row[scenario] = train_together(work, sets, n, seconds, env, busy)
                print(f"{data} {policy:5s} {scenario:11s} img/s {row[scenario]}", flush=True)
            alone = row["alone"][0]
            row["pair_share_min"] = round(min(row["pair"]) / alone, 3)
            row["beside_busy_share"] = round(row["beside_busy"][0] / alone, 3)
            result[policy] = row
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["digits", "mnist"], choices=sorted(DATA))
    ap.add_argument("--seconds", type=float, default=24.0, help="each training's train.max_minutes")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    record = {
        "cpu": platform.processor() or platform.machine(),
        "usable_cores": usable_cores(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.shared_cores " + " ".join(argv or sys.argv[1:]),
        "results": {data: run(data, args.seconds) for data in args.data},
    }
    for data, res in record["results"].items():
        for policy, row in res.items():
            print(f"{data} {policy}: pair each >= {row['pair_share_min']:.0%} of alone, "
                  f"beside a busy job {row['beside_busy_share']:.0%}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
