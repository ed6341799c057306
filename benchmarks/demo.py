"""Time the demo per stage: wall time and CPU time (user + sys of this process and its Dask workers).

    python benchmarks/demo.py [PIPELINE] [--out runs/demo-bench] [--json times.json]

Runs the pipeline (default: the shipped quickstart) one stage at a time on one LocalCluster
sized to the machine, as `mixlab pipeline run` would, into a fresh run root. On a shared
machine wall time depends on the neighbours; CPU time does not, so the table shows both, and
CPU seconds / 2: the demo's time on 2 idle cores when both are kept busy (the swarm's two
workers do; torch's two threads on these tiny models less so: there, up to the CPU time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()

import psutil  # noqa: E402  (timed from before the imports: they are part of the demo's time)

from mixlab.cluster import dask_client  # noqa: E402
from mixlab.pipelines.run import plan_pipeline, run_pipeline  # noqa: E402


def cpu_seconds() -> float:
    """user + sys of this process and every live child (the LocalCluster's nannies and workers)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def idle_estimate(wall: float, cpu: float, cores: int = 2) -> float:
    """A stage's time on `cores` idle cores if it keeps them all busy: its CPU time spread over
    them (a lower bound; a stage that keeps only one core busy takes up to its CPU time)."""
    return cpu / cores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline", nargs="?", default="quickstart")
    ap.add_argument("--out", type=Path, default=Path("runs/demo-bench"))
    ap.add_argument("--json", type=Path, default=None, help="also write the times here")
    ap.add_argument("--keep", action="store_true", help="reuse an existing run root (finished stages skip)")
    args = ap.parse_args()
    if args.out.exists() and not args.keep:
        shutil.rmtree(args.out)
    plan = plan_pipeline(args.pipeline, args.out)
    rows = []
    t0 = time.perf_counter()
    with dask_client(None) as client:
        rows.append(("startup (imports, cluster)", time.perf_counter() - STARTED, cpu_seconds()))
        for step in plan.steps:
            w, c = time.perf_counter(), cpu_seconds()
            run_pipeline(args.pipeline, args.out, from_stage=step.name, until_stage=step.name, client=client)
            rows.append((step.name, time.perf_counter() - w, cpu_seconds() - c))
    stages_wall = sum(r[1] for r in rows[1:])
    rows.append(("shutdown", time.perf_counter() - t0 - stages_wall, 0.0))
    total_wall = time.perf_counter() - STARTED
    # The workers have exited and been reaped: their CPU time is now in this process's children_*.
    total_cpu = cpu_seconds()
    print(f"\n{'stage':28s} {'wall s':>8s} {'cpu s':>8s} {'cpu/2 s':>8s}")
    out = []
    for name, wall, cpu in rows:
        idle = idle_estimate(wall, cpu)
        out.append(
            {
                "stage": name,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "cpu_per_core_s": round(idle, 2),
            }
        )
        print(f"{name:28s} {wall:8.1f} {cpu:8.1f} {idle:8.1f}")
    print(f"{'total':28s} {total_wall:8.1f} {total_cpu:8.1f} {total_cpu / 2:8.1f}")
    load = ", ".join(f"{x:.2f}" for x in psutil.getloadavg())
    print(f"load average now: {load} on {psutil.cpu_count()} cores (wall time is the neighbours' too)")
    if args.json:
        summary = {"stages": out, "total_wall_s": total_wall, "total_cpu_s": total_cpu}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
