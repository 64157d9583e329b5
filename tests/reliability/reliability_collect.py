"""A pytest plugin (run.py loads it with `-p reliability_collect`) that turns the outcome of the other
areas' fault tests into reliability records, appended to TREASURE_RELIABILITY_RECORDS."""

from __future__ import annotations

import json
import os

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


class _Collector:
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




_collector = _Collector()


def pytest_runtest_logreport(report):
    _collector.pytest_runtest_logreport(report)


def pytest_sessionfinish(session):
    target = os.environ.get("TREASURE_RELIABILITY_RECORDS")
    if target:
        with open(target, "a") as f:
            for rec in _collector.records():
                f.write(json.dumps(rec) + "\n")
