"""Measure a run against its budget: wall time and peak memory of a whole command.

    .venv/bin/python benchmarks/budget.py demo        # `seq2seq-rm demo`: budget 10 min, 4 GiB
    .venv/bin/python benchmarks/budget.py experiment  # `seq2seq-rm experiment` (3 seeds, main arms): 75 min
    .venv/bin/python benchmarks/budget.py demo --out runs/demo-budget --json budget.json -- key=value ...

The command runs as a child process (the CLI, exactly as a user runs it); the wall time is
measured around it and the peak memory is the largest resident set of any process it started
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). The machine (CPU model, cores, memory, versions) is
printed and written with the numbers, so a budget claim names where it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BUDGETS = {  # seconds, bytes (None: no memory budget)
    "demo": (10 * 60, 4 * 2**30),
    "experiment": (75 * 60, None),
}
DEFAULT_ARGS = {"demo": [], "experiment": ["ablation=[]"]}  # the experiment's budget covers the main arms


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "memory_bytes": mem,
            "python": platform.python_version()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=sorted(BUDGETS))
    p.add_argument("--out", help="the run's output folder (default runs/<which>-budget)")
    p.add_argument("--json", help="write the measurement here")
    p.add_argument("extra", nargs="*", help="more arguments for the command (after --)")
    a = p.parse_intermixed_args()  # options may follow the positionals (`experiment --out D -- k=v`)
    out = a.out or f"runs/{a.which}-budget"
    exe = Path(sys.executable).with_name("seq2seq-rm")
    cmd = [str(exe), a.which, "--out", out, "--overwrite", *DEFAULT_ARGS[a.which], *a.extra]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
    limit_s, limit_b = BUDGETS[a.which]
    result = {
        "command": cmd, "exit_code": proc.returncode, "wall_seconds": round(wall, 1), "peak_rss_bytes": peak,
        "budget_seconds": limit_s, "budget_bytes": limit_b, "within_time": wall <= limit_s,
        "within_memory": None if limit_b is None else peak <= limit_b, "machine": machine(),
    }
    try:
        import torch

        result["machine"]["torch"] = torch.__version__
        result["machine"]["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cpu_count']} CPUs, {(m['memory_bytes'] or 0) / 2**30:.0f} GiB, {m['platform']}")
    print(f"{a.which}: exit {proc.returncode}, {wall / 60:.1f} min of {limit_s / 60:.0f} "
          f"({'within' if result['within_time'] else 'OVER'} budget), peak memory {peak / 2**30:.2f} GiB"
          + ("" if limit_b is None else f" of {limit_b / 2**30:.0f} ({'within' if result['within_memory'] else 'OVER'})"))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if proc.returncode == 0 and result["within_time"] and result["within_memory"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
