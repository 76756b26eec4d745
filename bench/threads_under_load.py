"""PyTorch throughput beside busy neighbour processes: torch's default threading vs. the project's.

    python bench/threads_under_load.py                 # 3 busy processes, 5 s per measurement
    python bench/threads_under_load.py --busy 1 3 --seconds 10 --workload matmul mlp_train

Each measurement is a fresh worker process (OpenMP reads its settings when torch is imported) that
runs a workload for --seconds and reports iterations per second: a 256x256 float32 matmul, or one
training step (forward, backward, Adam) of a 3-layer MLP at batch 32, about an SFT step of the tiny
policy. It runs idle, then beside each --busy count of pure-Python busy loops, which this script
starts and stops itself. Settings:
- torch default: no OMP_* variables (as many OpenMP threads as cores; waiting workers spin);
- 1 thread: OMP_NUM_THREADS=1;
- ProphRL: the environment prophrl_common.threads.configure_threads() gives every entry point
  (OMP_WAIT_POLICY=PASSIVE: waiting workers sleep).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKLOADS = ("matmul", "mlp_train")


def _worker(workload: str, seconds: float) -> None:
    import torch

    torch.manual_seed(0)
    if workload == "matmul":
        a, b = torch.randn(256, 256), torch.randn(256, 256)

        def step():
            torch.mm(a, b)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.GELU(), torch.nn.Linear(512, 512),
                                    torch.nn.GELU(), torch.nn.Linear(512, 70))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        x, y = torch.randn(32, 512), torch.randn(32, 70)

        def step():
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for _ in range(5):
        step()
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        iterations += 1
    print(json.dumps({"it_per_s": iterations / (time.perf_counter() - start), "threads": torch.get_num_threads()}))


def _settings() -> dict[str, dict[str, str]]:
    from prophrl_common.threads import configure_threads

    plain = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))}
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(plain)
        configure_threads()
        project = dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"torch default": plain, "1 thread": {**plain, "OMP_NUM_THREADS": "1"},
            f"ProphRL (OMP_WAIT_POLICY={project.get('OMP_WAIT_POLICY')})": project}


def _measure(env: dict[str, str], workload: str, seconds: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", workload, "--seconds", str(seconds)], env=env,
                         capture_output=True, text=True, timeout=seconds * 20 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _start_busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
            for _ in range(count)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        proc.kill()
    for proc in processes:
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, nargs="+", default=[3], help="busy background process counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.seconds)
        return 0
    if any(n < 0 for n in args.busy) or args.seconds <= 0:
        parser.error("--busy counts must be >= 0 and --seconds > 0")

    from prophrl_common.tables import print_table

    settings = _settings()
    loads = [0] + [n for n in args.busy if n > 0]
    print(f"{os.cpu_count()} CPUs; {args.seconds:g} s per measurement; load average before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for workload in args.workload:
        rates: dict[tuple[str, int], float] = {}
        threads: dict[str, int] = {}
        for busy in loads:
            neighbours = _start_busy(busy)
            try:
                for name, env in settings.items():
                    result = _measure(env, workload, args.seconds)
                    rates[name, busy] = result["it_per_s"]
                    threads[name] = result["threads"]
            finally:
                _stop(neighbours)
        for name in settings:
            rows.append([workload, name, threads[name]] + [rates[name, busy] for busy in loads]
                        + [rates[name, 0] / rates[name, loads[-1]] if len(loads) > 1 else None])
    print_table("torch iterations per second, idle and beside busy processes",
                ["workload", "setting", "torch threads"] + [f"{n} busy" if n else "idle" for n in loads]
                + [f"slowdown at {loads[-1]} busy"], rows, float_format=".1f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
