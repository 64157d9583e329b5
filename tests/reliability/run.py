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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
DOC = REPO / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"

from reliability_collect import EXTERNAL  # noqa: E402


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

    lines = ["| scenario | injected | expected | happened | lost | hung | failed | s |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        failed = "; ".join(r.get("failed") or []) or "none"  # records of older runs have no `failed`
        lines.append("| " + " | ".join(cell(v) for v in (r["scenario"], r["injected"], r["expected"], r["happened"],
                                                         r["lost"], r["hung"], failed, r["seconds"])) + " |")
    return "\n".join(lines)


def write_doc(records: list[dict], header: str) -> None:
    block = f"{TABLE_START}\n{header}\n\n{table(records)}\n{TABLE_END}"
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{TABLE_START}\n{TABLE_END}\n"
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    DOC.write_text(text[:start] + block + text[end:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the scenarios of the default suite")
    ap.add_argument("-k", default=None, help="pytest -k expression to pick scenarios")
    ap.add_argument("--no-write", action="store_true", help="print the table only; leave docs/reliability.md alone")
    ap.add_argument("--records", default=None, help="JSONL file the scenario records are appended to (default: a temp file)")
    ap.add_argument("--render", metavar="NOTE", default=None,
                    help="run nothing: write the table of the --records file to docs/reliability.md with this note")
    args = ap.parse_args()
    os.chdir(REPO)
    if args.render is not None:
        records = [json.loads(line) for line in Path(args.records).read_text().splitlines()]
        print(table(records))
        write_doc(records, f"{args.render} Machine: {machine()}.")
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")  # a busy 2-core machine starts raylets slowly
    records_file = Path(args.records or Path(tempfile.mkdtemp(prefix="reliability-")) / "records.jsonl")
    os.environ["TREASURE_RELIABILITY_RECORDS"] = str(records_file)
    started, header_machine = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine()
    # Two pytest processes: the reliability tests, then the other areas' fault tests (each area's
    # conftest and session fixtures, e.g. its own Serve HTTP port, stay in their own session).
    select = ["-m", "not slow"] if args.fast else []
    select += ["-k", args.k] if args.k else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    t0 = time.monotonic()
    codes = [subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select, "tests/reliability"],
                             env=env)]
    if not args.fast:
        codes.append(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "reliability_collect",
                                      *select, *EXTERNAL], env=env))
    code = max(c for c in codes if c != 5) if any(c != 5 for c in codes) else 0  # 5: nothing selected
    records = [json.loads(line) for line in records_file.read_text().splitlines()] if records_file.exists() else []
    print("\n" + table(records))
    bad = [r["scenario"] for r in records if r["lost"] or r["hung"] or r.get("failed")]
    print(f"\n{len(records)} scenarios, {len(bad)} with lost rows/requests, a hang or a failed expectation {bad}; "
          f"pytest exit {code}; "
          f"{time.monotonic() - t0:.0f} s")
    if not args.no_write:
        kind = "fast subset" if args.fast else "full run" if not args.k else f"scenarios matching -k {args.k!r}"
        write_doc(records, f"Run {started} ({kind}, {time.monotonic() - t0:.0f} s) "
                           f"on {header_machine}. pytest exit {int(code)}.")
    return 0 if code == 0 and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
