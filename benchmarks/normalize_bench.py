"""Benchmark: the normalize stage on a large synthetic corpus (JSONL parts, a glob source), on Ray Data.

Prints rows/s and the peak memory of the driver and all its Ray processes (PSS, sampled every
0.2 s with psutil), for each size given, so growth with the row count is visible side by
side: memory that grows with the text would scale with the size; the stage keeps one id per row.

Run:  RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/normalize_bench.py [--rows 250000,1000000] [--files 20]
"""

import argparse
import json
import os
import random
import tempfile
import threading
import time

import psutil

from treasure.corpus.config import NormalizeConfig
from treasure.corpus.stage import run

WORDS = ("model marker length domain task answer question corpus ray data train tune serve token prompt "
         "response long tail quality language format code math write explain list").split()


def write_corpus(folder: str, rows: int, files: int, seed: int = 0) -> int:
    """`rows` records in `files` JSONL parts: ~1% duplicates, ~0.1% broken lines; returns bytes written."""
    os.makedirs(folder, exist_ok=True)
    size = 0
    per = rows // files
    for f in range(files):
        lines = []
        for k in range(per):
            n = f * per + k
            if n % 1000 == 999:
                lines.append('{"instruction": "broken')
                continue
            key = n - 1 if n % 100 == 50 else n  # a duplicate of the row before
            rng = random.Random(seed * 10**9 + key)
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
            lines.append(json.dumps({"instruction": f"Task {key}: explain", "input": "", "output": f"{key} {words}",
                                     "language": "English"}))
        data = ("\n".join(lines) + "\n").encode()
        with open(os.path.join(folder, f"part-{f:04d}.jsonl"), "wb") as out:
            out.write(data)
        size += len(data)
    return size


class PeakMemory:
    """Peak summed PSS of this process and its descendants (the local Ray cluster's processes), and
    this driver's own peak RSS. PSS, not RSS: the object store's shared pages, mapped by several
    workers, are counted once in total instead of once per process."""

    def __init__(self):
        self.peak = self.driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.driver = max(self.driver, me.memory_info().rss)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="250000,1000000", help="comma-separated corpus sizes")
    parser.add_argument("--files", type=int, default=20)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    with PeakMemory() as idle:
        time.sleep(1.0)
    print(f"machine: {os.cpu_count()} CPUs; driver + idle Ray cluster: PSS {idle.peak / 2**20:.0f} MiB")
    print(f"{'rows':>9} {'input MiB':>9} {'seconds':>8} {'rows/s':>8} {'peak PSS MiB':>12} {'driver RSS':>10} "
          f"{'published':>9} {'errors':>6} {'dups':>5}")
    for rows in [int(r) for r in args.rows.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            size = write_corpus(os.path.join(tmp, "in", "sft"), rows, args.files)
            config = NormalizeConfig.model_validate({
                "input": os.path.join(tmp, "in"), "output": os.path.join(tmp, "out"), "rows_per_file": 100_000,
                "experiment": "normalize-bench",
                "sources": {"sft": {"type": "file", "path": "sft/*.jsonl", "prompt": ["instruction", "input"],
                                    "response": "output", "language_field": "language"}}})
            started = time.perf_counter()
            with PeakMemory() as peak:
                summary = run(config)
            seconds = time.perf_counter() - started
            m = summary["metrics"]
            assert m["records"] == rows and m["rows"] + m["error_rows"] + m["duplicates"] == rows  # nothing lost
            print(f"{rows:>9} {size / 2**20:>9.0f} {seconds:>8.1f} {rows / seconds:>8.0f} {peak.peak / 2**20:>12.0f} "
                  f"{peak.driver / 2**20:>10.0f} {m['rows']:>9} {m['error_rows']:>6} {m['duplicates']:>5}")


if __name__ == "__main__":
    main()
