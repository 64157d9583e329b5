"""The reliability runner (issue 9): run every fault and abuse scenario, print the table, record it.

    .venv/bin/python tests/reliability/run.py            # all scenarios (about 30-60 min on 2 busy cores)
    .venv/bin/python tests/reliability/run.py --fast     # only the default-suite subset
    .venv/bin/python tests/reliability/run.py -k overload --no-write

Scenarios are the pytest tests of tests/reliability (each writes its record) plus the fault tests that
already live with their areas (training worker kill, corrupt checkpoint, tune restore, schema fuzz),
recorded from their pytest outcome. The table goes to stdout and to docs/reliability.md with the date
and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"

EXTERNAL = {  # node id prefix -> (scenario, injected, expected)
    "tests/train/test_train_resume.py::test_killed_worker_resumes_from_last_checkpoint": (
        "training: worker killed mid-epoch", "SIGKILL the Ray Train worker after a registered checkpoint",
        "resumes from the last checkpoint's step (not 0) and finishes all steps"),
    "tests/train/test_train_checkpoint_read.py::test_corrupt_newest_falls_back_to_previous": (
        "training: newest checkpoint corrupt", "newest checkpoint's weights cut in half (torn upload)",
        "CheckpointWarning naming the checksum; the previous checkpoint is loaded"),
    "tests/tune/test_tune_restore.py::test_interrupted_search_resumes_without_rerunning": (
        "tuning: search interrupted", "SIGINT to the tuning driver in the middle of trial 3 of 4",
        "Tuner.restore finishes all 4 trials; finished trials and rounds are not rerun"),
    "tests/serving/test_serving_fuzz.py::test_no_input_causes_a_server_error": (
        "abuse: schema fuzzing (schemathesis)", "inputs generated from the app's OpenAPI document",
        "no 5xx but 503; every answer JSON or SSE"),
}


class Collector:
    """A pytest plugin turning the outcome of the EXTERNAL tests into records."""

    def __init__(self):
        self.external: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report):
        prefix = next((p for p in EXTERNAL if report.nodeid.startswith(p)), None)
        if prefix is None or (report.when != "call" and not report.failed):
            return
        agg = self.external.setdefault(prefix, {"passed": 0, "failed": 0, "seconds": 0.0, "why": "", "hung": False})
        agg["seconds"] += report.duration
        if report.passed:
            agg["passed"] += 1
        elif report.failed:
            agg["failed"] += 1
            text = str(report.longrepr)
            agg["hung"] |= "Timeout" in text
            agg["why"] = agg["why"] or text.strip().splitlines()[-1][:200]

    def records(self) -> list[dict]:
        out = []
        for prefix, agg in self.external.items():
            scenario, injected, expected = EXTERNAL[prefix]
            happened = f"{agg['passed']} case(s) passed" if not agg["failed"] else f"{agg['failed']} failed: {agg['why']}"
            out.append({"scenario": scenario, "injected": injected, "expected": expected, "happened": happened,
                        "lost": agg["failed"], "hung": agg["hung"], "seconds": round(agg["seconds"], 1),
                        "source": prefix})
        return out


def machine() -> str:
    mem = 0
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 2**20
    load = os.getloadavg()[0]
    import ray

    return (f"{platform.node()}: {os.cpu_count()} CPUs, {mem} GiB RAM, no GPU, Python {platform.python_version()}, "
            f"Ray {ray.__version__}; load average {load:.0f} at start (shared with other work)")


def table(records: list[dict]) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| scenario | injected | expected | happened | lost | hung | s |", "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append("| " + " | ".join(cell(r[k]) for k in ("scenario", "injected", "expected", "happened", "lost", "hung", "seconds")) + " |")
    return "\n".join(lines)


def write_doc(records: list[dict], header: str) -> None:
    block = f"{TABLE_START}\n{header}\n\n{table(records)}\n{TABLE_END}"
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{TABLE_START}\n{TABLE_END}\n"
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    DOC.write_text(text[:start] + block + text[end:])


def main() -> int:
    import pytest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the scenarios of the default suite")
    ap.add_argument("-k", default=None, help="pytest -k expression to pick scenarios")
    ap.add_argument("--no-write", action="store_true", help="print the table only; leave docs/reliability.md alone")
    ap.add_argument("--records", default=None, help="JSONL file the scenario records are appended to (default: a temp file)")
    args = ap.parse_args()
    os.chdir(REPO)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")  # a busy 2-core machine starts raylets slowly
    records_file = Path(args.records or Path(tempfile.mkdtemp(prefix="reliability-")) / "records.jsonl")
    os.environ["TREASURE_RELIABILITY_RECORDS"] = str(records_file)
    started, header_machine = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine()
    targets = ["tests/reliability"] + ([] if args.fast else list(EXTERNAL))
    pytest_args = ["-q", "-p", "no:cacheprovider", "-m", "not slow" if args.fast else "reliability or slow", *targets]
    if args.k:
        pytest_args += ["-k", args.k]
    collector = Collector()
    t0 = time.monotonic()
    code = pytest.main(pytest_args, plugins=[collector])
    records = [json.loads(line) for line in records_file.read_text().splitlines()] if records_file.exists() else []
    records += collector.records()
    print("\n" + table(records))
    bad = [r["scenario"] for r in records if r["lost"] or r["hung"]]
    print(f"\n{len(records)} scenarios, {len(bad)} with lost rows/requests or a hang {bad}; pytest exit {code}; "
          f"{time.monotonic() - t0:.0f} s")
    if not args.no_write:
        kind = "fast subset" if args.fast else "full run" if not args.k else f"scenarios matching -k {args.k!r}"
        write_doc(records, f"Run {started} ({kind}, {time.monotonic() - t0:.0f} s) "
                           f"on {header_machine}. pytest exit {int(code)}.")
    return 0 if code == 0 and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
