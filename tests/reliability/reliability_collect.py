"""A pytest plugin (run.py loads it with `-p reliability_collect`) that turns the outcome of the other
areas' fault tests into reliability records, appended to TREASURE_RELIABILITY_RECORDS.

A skipped test is a failed scenario (its fault was never injected), and so is one that never ran
when no `-k` filter picked scenarios: a renamed or deleted test cannot vanish from the table unnoticed."""

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
    "tests/serving/test_serving_vllm.py::test_engine_failure_ends_the_stream_with_an_error_event_within_a_second": (
        "serving: engine dies mid-stream", "SIGKILL vLLM's engine-core process after 3 streamed events",
        "the stream ends within 1 s with an engine_error event (an incident id, no exception text) and [DONE]"),
    "tests/serving/test_serving_vllm.py::test_client_disconnect_aborts_the_request_in_the_engine": (
        "serving: client leaves mid-stream", "the client drops the connection after 4 of ~500 tokens",
        "the engine's running requests return to 0 within 1 s"),
    "tests/serving/test_serving_http.py::test_deeply_nested_json_is_422_on_every_endpoint": (
        "abuse: deeply nested JSON", "a 2 KB body of 1,000 nested arrays on every POST endpoint", "422, never a 500"),
    "tests/serving/test_serving_vllm.py::test_a_5000_digit_number_is_422_not_500": (
        "abuse: 5,000-digit integer", "seed with 5,000 digits (CPython's int-size guard) on every POST endpoint",
        "422, never a 500"),
    "tests/corpus/test_corpus_readers.py::test_hostile_json_lines_are_error_rows_not_an_aborted_stage": (
        "bad data: hostile JSON in a corpus file", "5,000 nested arrays and a 5,000-digit integer between good lines",
        "each an error row with its reason; the lines around them are rows; the stage goes on"),
    "tests/test_storage.py::test_local_write_is_atomic_and_leaves_no_temp_files": (
        "storage: crash between write and rename", "os.replace fails while a manifest is rewritten",
        "the old file stays whole; no temporary file is left"),
    "tests/train/test_train_checkpoint_read.py::test_torn_checkpoint_manifest_is_a_reason_not_a_crash": (
        "training: torn checkpoint manifest", "half of a checkpoint's manifest.json",
        "validation names it as the reason; no crash"),
}


class _Collector:
    """A pytest plugin turning the outcome of the EXTERNAL tests into records."""

    def __init__(self):
        self.external: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report):
        prefix = next((p for p in EXTERNAL if report.nodeid.startswith(p)), None)
        if prefix is None or (report.when != "call" and not (report.failed or report.skipped)):
            return
        agg = self.external.setdefault(prefix, {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0, "why": "",
                                                "hung": False})
        agg["seconds"] += report.duration
        if report.skipped:
            agg["skipped"] += 1
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            agg["why"] = agg["why"] or f"skipped: {reason}"[:200]
        elif report.passed and report.when == "call":
            agg["passed"] += 1
        elif report.failed:
            agg["failed"] += 1
            text = str(report.longrepr)
            agg["hung"] |= "Timeout" in text
            agg["why"] = agg["why"] or text.strip().splitlines()[-1][:200]

    def records(self, expect_all: bool) -> list[dict]:
        """One record per EXTERNAL scenario that ran; with `expect_all`, also one per scenario that did not."""
        out = []
        for prefix, (scenario, injected, expected) in EXTERNAL.items():
            agg = self.external.get(prefix)
            if agg is None and not expect_all:
                continue
            failed = []
            if agg is None:
                happened, failed = "did not run", [f"no test matched {prefix}"]
                agg = {"failed": 0, "hung": False, "seconds": 0.0}
            elif agg["failed"]:
                happened = f"{agg['failed']} failed: {agg['why']}"
            elif agg["skipped"]:
                happened, failed = f"{agg['skipped']} skipped", [agg["why"]]
            else:
                happened = f"{agg['passed']} case(s) passed"
            out.append({"scenario": scenario, "injected": injected, "expected": expected, "happened": happened,
                        "lost": agg["failed"], "hung": agg["hung"], "failed": failed,
                        "seconds": round(agg["seconds"], 1), "source": prefix})
        return out


_collector = _Collector()


def pytest_runtest_logreport(report):
    _collector.pytest_runtest_logreport(report)


def pytest_sessionfinish(session):
    target = os.environ.get("TREASURE_RELIABILITY_RECORDS")
    if target:
        with open(target, "a") as f:
            # -k picks some scenarios on purpose; without it every EXTERNAL test must have run.
            for rec in _collector.records(expect_all=not session.config.option.keyword):
                f.write(json.dumps(rec) + "\n")
