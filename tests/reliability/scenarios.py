"""Reliability scenarios (issue 9): each runs a real component, injects one fault, and returns a record

    {"scenario", "injected", "expected", "happened", "lost", "hung", "seconds"}

`lost` counts input rows or requests that ended up nowhere (neither in an output nor with a clean,
recorded error); `hung` says a bound was hit. The tests (test_reliability*.py) assert lost == 0 and
not hung; `run.py` prints the records as a table and writes docs/reliability.md.

Helpers here are plain functions over explicit arguments (URIs, URLs, the Ray module), so the
pytest fixtures of other areas (moto server, MLflow store, Serve app) supply the real components.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_module(name: str, path: Path):
    """Import another area's conftest under a unique name (every conftest is 'conftest' otherwise)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


annotate_fixtures = load_module("reliability_annotate_corpus", REPO / "tests" / "annotate" / "annotate_corpus.py")
serving_fixtures = load_module("reliability_serving_fixtures", REPO / "tests" / "serving" / "conftest.py")


def record(scenario: str, injected: str, expected: str, happened: str, lost: int, hung: bool, t0: float,
           failed: list[str] | None = None) -> dict:
    """A scenario's outcome. `failed` lists the expectations that did not hold beyond `lost` and `hung`
    (the fault was not injected, a rerun redid finished work, a replica was not replaced, ...)."""
    return {"scenario": scenario, "injected": injected, "expected": expected, "happened": happened,
            "lost": int(lost), "hung": bool(hung), "failed": list(failed or []), "seconds": round(time.monotonic() - t0, 1)}


def wait_for(predicate, timeout: float, every: float = 0.2, alive=None) -> bool:
    """Poll `predicate` until true (True) or `timeout` seconds pass or `alive()` turns false (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None and not alive():
            return bool(predicate())
        time.sleep(every)
    return False


def alive_actor_pids(ray, name_part: str) -> list[int]:
    """PIDs of this process's Ray workers (its own local cluster) whose title names `name_part`.

    Ray retitles an actor's worker process "ray::<class name>[.<method>]". Walking this process's
    children (ray.init started the raylet, which starts the workers) keeps other clusters on the
    machine out, and needs no dashboard.
    """
    import psutil

    pids = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::") and name_part in title:
            pids.append(p.pid)
    return pids


# --- annotate: exactly once ---------------------------------------------------------------------

def annotated_ids(uri: str) -> tuple[list[str], list[str]]:
    """(ids in the committed data parts, ids in the committed errors table) of an annotate output."""
    import pyarrow.parquet as pq

    from treasure import storage

    manifest = storage.read_manifest(uri)
    data, errors = [], []
    for entry in manifest["files"]:
        if entry["path"].startswith(("data/", "errors/")) and entry["path"].endswith(".parquet"):
            ids = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(uri, entry["path"])))).column("id").to_pylist()
            (data if entry["path"].startswith("data/") else errors).extend(ids)
    return data, errors


def exactly_once(input_ids: list[str], uri: str) -> tuple[int, int, str]:
    """(lost, duplicated, summary) of an annotate output against its input ids.

    Lost counts rows in no output, and rows in the wrong one: a good row that ends in the errors table
    (a fault must not turn good rows into "recorded errors") or a deliberately bad row (ids `bad:*`,
    from annotate_corpus.make_rows) that ends as data.
    """
    data, errors = annotated_ids(uri)
    out = data + errors
    missing = len(set(input_ids) - set(out))
    misplaced = sum(not i.startswith("bad:") for i in set(errors)) + sum(i.startswith("bad:") for i in set(data))
    dup = len(out) - len(set(out))
    bad = sum(i.startswith("bad:") for i in input_ids)
    return missing + misplaced, dup, (f"{len(data)} rows + {len(errors)} error rows for {len(input_ids)} inputs "
                                      f"({bad} deliberately bad), {misplaced} in the wrong table, {dup} duplicated")


def done_shards(output: str) -> int:
    from treasure import storage

    return sum(f.endswith("/done.json") for f in storage.list_files(storage.join(output, "_staging")))


def annotate_tagger_killed(ray, cfg, input_ids: list[str]) -> dict:
    """SIGKILL the LLM tagger actor after the first shard is written; the run must still account for every row."""
    from treasure import storage
    from treasure.annotate.stage import run

    t0 = time.monotonic()
    result: dict = {}
    box: list = []

    def target():
        try:
            result.update(run(cfg))
        except BaseException as e:  # reported in the record
            box.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    killed = []
    if wait_for(lambda: done_shards(cfg.output) >= 1 and alive_actor_pids(ray, "Tagger"), 600, alive=thread.is_alive):
        for pid in alive_actor_pids(ray, "Tagger")[:1]:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    thread.join(timeout=900)
    hung = thread.is_alive()
    injected = f"SIGKILL tagger actor pid {killed} after the first shard" if killed else "no tagger actor found alive (not injected)"
    expected = "run completes; every input row exactly once in data or errors"
    if hung or box or storage.read_manifest(cfg.output) is None:
        happened = "hung" if hung else f"failed: {box[0]!r}"[:300] if box else "no committed output"
        return record("annotate: tagger actor killed", injected, expected, happened, len(input_ids), hung, t0)
    lost, dup, summary = exactly_once(input_ids, cfg.output)
    tagged = result["metrics"].get("tagger_answers", "?")
    return record("annotate: tagger actor killed", injected, expected, f"{summary}; tagger answers {tagged}",
                  lost + dup, hung, t0, failed=[] if killed else ["the fault was not injected"])


def annotate_driver_killed(ray, cfg, input_ids: list[str], env: dict) -> dict:
    """SIGKILL the driver process after two shards; nothing is committed; a rerun finishes exactly once."""
    from treasure import storage
    from treasure.annotate.stage import run

    t0 = time.monotonic()
    driver = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("annotate_driver.py")), ray.get_runtime_context().gcs_address,
         cfg.model_dump_json()],
        cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO / "platform")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        reached = wait_for(lambda: done_shards(cfg.output) >= 2, 600, alive=lambda: driver.poll() is None)
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
        err = driver.communicate(timeout=60)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
    before = done_shards(cfg.output)
    committed_after_kill = storage.read_manifest(cfg.output) is not None
    expected = "no committed output after the kill; the rerun skips finished shards; every row exactly once"
    if not reached:
        return record("annotate: driver killed, rerun", "driver ended before 2 shards (not injected)", expected,
                      f"driver rc {driver.returncode}: {err[-300:]}", len(input_ids), False, t0)
    injected = f"SIGKILL driver after {before} shards written"
    summary = run(cfg)
    lost, dup, text = exactly_once(input_ids, cfg.output)
    m = summary["metrics"]
    happened = (f"committed after kill: {committed_after_kill}; rerun skipped {m['shards_skipped']}/{m['shards']} shards; {text}")
    failed = []
    if committed_after_kill:
        failed.append("an output was committed by the killed run")
    if m["shards_skipped"] != before:  # every shard finished before the kill, and only those, is reused
        failed.append(f"the rerun skipped {m['shards_skipped']} shards, {before} were finished")
    if before >= m["shards"]:
        failed.append("every shard was finished before the kill: nothing was left to resume")
    return record("annotate: driver killed, rerun", injected, expected, happened, lost + dup, False, t0, failed)


# --- annotate: commit markers torn by a crash mid-write ---------------------------------------------

def _tear(path: str) -> None:
    """Leave the first half of a local file, as a writer killed mid-write (without atomic rename) would."""
    with open(path, "rb") as f:
        whole = f.read()
    with open(path, "wb") as f:  # deliberately not treasure.storage: this is the torn write being simulated
        f.write(whole[: len(whole) // 2])


def annotate_torn_markers(cfg, input_ids: list[str]) -> dict:
    """Crash a run after 3 shards and tear one shard's done.json; rerun. Then tear the committed
    manifest.json; rerun. Each rerun must treat the torn marker as "not done / not committed" (never
    a crash), redo exactly the torn shard, and publish every row exactly once."""
    from treasure import storage
    from treasure.annotate.stage import run

    t0 = time.monotonic()
    expected = ("a torn done.json redoes only its shard; a torn manifest reads as uncommitted and is republished; "
                "no crash, every row exactly once")
    failed, notes = [], []
    try:
        run(cfg, crash_after_shards=3)
        failed.append("the first run did not crash after 3 shards")
    except RuntimeError as e:
        if "simulated crash" not in str(e):
            raise
    markers = sorted(f for f in storage.list_files(storage.join(cfg.output, "_staging")) if f.endswith("/done.json"))
    _tear(markers[-1])
    summary = run(cfg)
    m = summary["metrics"]
    notes.append(f"{len(markers)} shards done at the crash, 1 done.json torn; rerun ran {m['shards_run']}, "
                 f"skipped {m['shards_skipped']}/{m['shards']}")
    if m["shards_skipped"] != len(markers) - 1:
        failed.append(f"the rerun skipped {m['shards_skipped']} shards, {len(markers) - 1} were whole")
    manifest_path = storage.join(cfg.output, storage.MANIFEST)
    first_id = storage.read_manifest(cfg.output)["manifest_id"]
    _tear(manifest_path)
    if storage.read_manifest(cfg.output) is not None:
        failed.append("a torn manifest still read as committed")
    again = run(cfg)
    recommitted = storage.read_manifest(cfg.output)
    notes.append(f"torn manifest: rerun ran {again['metrics']['shards_run']} shards and committed "
                 f"{'the same' if recommitted and recommitted['manifest_id'] == first_id else 'a different'} manifest")
    if recommitted is None:
        failed.append("the rerun after a torn manifest committed nothing")
    if again["metrics"]["shards_run"] != 0:
        failed.append(f"the rerun after a torn manifest redid {again['metrics']['shards_run']} finished shards")
    lost, dup, text = exactly_once(input_ids, cfg.output)
    return record("annotate: torn done.json and manifest, rerun", "half of one done.json (after a crash), then half "
                  "of the committed manifest.json", expected, f"{'; '.join(notes)}; {text}", lost + dup, False, t0, failed)


# --- tracking: the MLflow server goes away during a stage ------------------------------------------

class MlflowServer:
    """A real `mlflow server` (sqlite backend, proxied local artifacts) on 127.0.0.1:`port`, in its
    own process group so that stop() ends it and its workers, like a crashed host would."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 300) -> None:
        import urllib.request

        log = open(self.root / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
             f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", (self.root / "artifacts").as_uri(),
             "--serve-artifacts", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            try:
                return urllib.request.urlopen(f"{self.url}/health", timeout=5).status == 200
            except OSError:
                return False

        if not wait_for(answers, timeout, every=0.5, alive=lambda: self.proc.poll() is None):
            raise RuntimeError(f"mlflow server did not answer in {timeout} s: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


def mlflow_server_down(cfg, input_ids: list[str], server: MlflowServer) -> dict:
    """SIGKILL the MLflow tracking server after the first annotate shard; the stage must fail with a
    clear error, commit nothing and leave no run marked FINISHED; with the server back, a rerun reuses
    the finished shards and publishes every row exactly once under a FINISHED run."""
    import mlflow

    from treasure import storage
    from treasure.annotate.stage import run

    t0 = time.monotonic()
    expected = ("the stage fails naming the tracking server; nothing committed; no MLflow run FINISHED by the failed "
                "attempt; the rerun skips finished shards and publishes every row exactly once")
    box: list = []
    worker = threading.Thread(target=_capture, args=(box, run, cfg), daemon=True)
    worker.start()
    reached = wait_for(lambda: done_shards(cfg.output) >= 1, 600, alive=worker.is_alive)
    killed = reached and worker.is_alive()
    if killed:
        server.stop()
    worker.join(600)
    hung = worker.is_alive()
    before = done_shards(cfg.output)
    failed = []
    error = box[0] if box and isinstance(box[0], BaseException) else None
    if not killed:
        failed.append("the server was not stopped while the stage ran")
    if error is None:
        failed.append("the stage did not fail with the tracking server gone")
    elif "tracking server" not in str(error):
        failed.append(f"the error does not name the tracking server: {error!r}"[:300])
    if storage.read_manifest(cfg.output) is not None:
        failed.append("the failed attempt committed its output")
    server.start()
    runs = mlflow.search_runs(experiment_names=[cfg.experiment], output_format="list")
    finished_by_failed = [r.info.run_id for r in runs if r.info.status == "FINISHED"]
    if finished_by_failed:
        failed.append(f"the failed attempt left runs FINISHED: {finished_by_failed}")
    if hung:
        return record("tracking: MLflow server down mid-stage", "server SIGKILLed after the first shard", expected,
                      "the stage did not end within 600 s", len(input_ids), True, t0, failed)
    summary = run(cfg)
    m = summary["metrics"]
    rerun = mlflow.get_run(summary["mlflow_run_id"])
    if m["shards_skipped"] != before:
        failed.append(f"the rerun skipped {m['shards_skipped']} shards, {before} were finished")
    if rerun.info.status != "FINISHED" or rerun.data.metrics.get("input_rows") != len(input_ids):
        failed.append(f"the rerun's run is {rerun.info.status} with input_rows {rerun.data.metrics.get('input_rows')}")
    lost, dup, text = exactly_once(input_ids, cfg.output)
    statuses = sorted(r.info.status for r in runs)
    happened = (f"failed attempt: {type(error).__name__ if error else 'no error'} after {before} shards, its run(s) "
                f"{statuses}; rerun skipped {m['shards_skipped']}/{m['shards']} shards, run {rerun.info.status}; {text}")
    return record("tracking: MLflow server down mid-stage", "`mlflow server` SIGKILLed after the first annotate shard",
                  expected, happened, lost + dup, False, t0, failed)


# --- storage: the disk fills up while shards are written ------------------------------------------

def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def annotate_disk_full(cfg, input_ids: list[str], disk: Path, leave: int) -> dict:
    """Annotate onto a small filesystem (`disk`, a tmpfs the test mounted) filled up to `leave` free
    bytes, so a shard write meets ENOSPC mid-run. The run must fail with the OS's "no space" error,
    commit nothing, leave no temporary file and no torn shard marker; once space is freed a rerun
    reuses the whole shards and publishes every row exactly once."""
    from treasure import storage
    from treasure.annotate.stage import run

    t0 = time.monotonic()
    expected = ("the run fails with ENOSPC; no manifest, no temporary file, no torn done.json; after space is freed "
                "the rerun skips the whole shards and publishes every row exactly once")
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free_bytes(disk) - leave))
    failed = []
    error = None
    try:
        run(cfg)
    except OSError as e:
        error = e
    if error is None or error.errno != 28:  # ENOSPC
        failed.append(f"the run did not fail with ENOSPC: {error!r}"[:300])
    markers = [f for f in storage.list_files(storage.join(cfg.output, "_staging")) if f.endswith("/done.json")]
    torn = [m for m in markers if storage.read_json_or_none(m, "shard marker") is None]
    temps = [str(p) for p in disk.rglob("*.tmp")]
    committed = storage.read_manifest(cfg.output) is not None
    failed += [f"{len(torn)} torn done.json"] * bool(torn) + [f"temporary files left: {temps}"] * bool(temps)
    failed += ["the failed run committed a manifest"] * committed
    filler.unlink()
    summary = run(cfg)
    m = summary["metrics"]
    if m["shards_skipped"] != len(markers) - len(torn):
        failed.append(f"the rerun skipped {m['shards_skipped']} shards, {len(markers) - len(torn)} were whole")
    if not markers or len(markers) >= m["shards"]:
        failed.append(f"{len(markers)} of {m['shards']} shards were done when the disk filled: not mid-run")
    lost, dup, text = exactly_once(input_ids, cfg.output)
    happened = (f"first run: {error.strerror if isinstance(error, OSError) else error!r} after {len(markers)} whole "
                f"shards, {len(torn)} torn markers, {len(temps)} temp files, committed: {committed}; rerun skipped "
                f"{m['shards_skipped']}/{m['shards']} shards; {text}")
    return record("storage: disk full while writing shards", f"annotate output on a tmpfs with {leave // 1024} KiB "
                  "free", expected, happened, lost + dup, False, t0, failed)


# --- storage: the S3 endpoint goes away mid-write --------------------------------------------------

def s3_endpoint_gone(cfg, input_ids: list[str], stop_server, start_server) -> dict:
    """Stop the S3 server after the first shard lands in staging; no manifest may be committed; a rerun
    after the endpoint is back publishes every row exactly once."""
    from treasure import storage
    from treasure.annotate.stage import run

    t0 = time.monotonic()
    box: list = []
    thread = threading.Thread(target=lambda: _capture(box, run, cfg), daemon=True)
    thread.start()
    injected = "endpoint never reached staging (not injected)"
    if wait_for(lambda: _safe(lambda: done_shards(cfg.output) >= 1), 600, alive=thread.is_alive):
        stop_server()
        injected = "S3 server stopped after the first staged shard"
    thread.join(timeout=600)
    hung = thread.is_alive()
    first = "hung" if hung else (f"first run failed: {type(box[0]).__name__}" if box and isinstance(box[0], BaseException)
                                 else "first run finished")
    start_server()
    committed = storage.read_manifest(cfg.output)
    partial_committed = committed is not None and bool(box and isinstance(box[0], BaseException))
    try:
        run(cfg)
        lost, dup, text = exactly_once(input_ids, cfg.output)
    except Exception as e:
        lost, dup, text = len(input_ids), 0, f"rerun failed: {e!r}"[:300]
    happened = f"{first}; manifest visible after the failure: {partial_committed}; rerun: {text}"
    failed = []
    if not (box and isinstance(box[0], BaseException)):
        failed.append("the first run did not fail: the endpoint was not gone while it wrote")
    if partial_committed:
        failed.append("the failed run committed a manifest")
    return record("storage: S3 endpoint gone mid-write", injected,
                  "the run fails and commits nothing; a rerun publishes every row exactly once", happened,
                  lost + dup, hung, t0, failed)


def _capture(box: list, fn, *args):
    try:
        box.append(fn(*args))
    except BaseException as e:
        box.append(e)


def _safe(fn):
    try:
        return fn()
    except Exception:
        return False


# --- bad data: a user corpus file full of broken records -------------------------------------------

GIANT = 2**20  # characters in each giant field


def bad_corpus_lines() -> list[bytes]:
    """One JSONL line per kind of bad record (and two good ones); see the comments."""
    giant = "word " * (GIANT // 5)
    return [
        b'{"q": "What is 2+2?", "a": "4"}',
        b'{"q": "Name a color", "a": ',                                   # truncated JSON
        b'{"q": 5, "a": "five"}',                                         # wrong type
        b'{"q": ["a", "list"], "a": {"nested": true}}',                    # wrong types, nested
        b'{"q": "Say nothing", "a": ""}',                                 # empty field
        b'{"q": "   ", "a": "blank prompt"}',                             # whitespace-only field
        b'{"q": null, "a": "null prompt"}',                               # null field
        json.dumps({"q": giant, "a": "giant prompt"}).encode(),           # giant field
        json.dumps({"q": "giant answer", "a": giant}).encode(),           # giant field
        b'{"q": "bad bytes \xff\xfe here", "a": "x"}',                    # invalid UTF-8
        b'{"q": "What is 2+2?", "a": "4"}',                               # duplicate id
        b'[1, 2, 3]',                                                     # not an object
        b'{"q": "\xc3", "a": "truncated multibyte"}',                     # invalid UTF-8 (cut sequence)
        b'\x00\x01\x02',                                                  # binary garbage
        b'{"q": "Capital of Italy?", "a": "Rome"}',
    ]


def bad_data_corpus(tmp: Path) -> dict:
    """Normalize a user file of broken records: every record a row, an error with a reason, or a duplicate."""
    import pyarrow.parquet as pq

    from treasure import storage
    from treasure.corpus.config import NormalizeConfig
    from treasure.corpus.stage import run

    t0 = time.monotonic()
    lines = bad_corpus_lines()
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    (tmp / "in" / "bad.jsonl").write_bytes(b"\n".join(lines))
    out = str(tmp / "normalized")
    cfg = NormalizeConfig.model_validate({
        "input": str(tmp / "in"), "output": out, "seed": 0, "experiment": "reliability",
        "sources": {"user": {"type": "file", "path": "bad.jsonl", "prompt": ["q"], "response": "a", "language": "English"}}})
    run(cfg)
    manifest = storage.read_manifest(out)
    rows = pq.read_table(storage.join(out, "data")).to_pylist()
    errors = pq.read_table(storage.join(out, "errors")).to_pylist()
    dups = manifest["duplicates_per_source"]["user"]
    no_reason = [e["record"] for e in errors if not (e.get("reason") or "").strip()]
    biggest_raw = max((len(e.get("raw") or "") for e in errors), default=0)
    giant_rows = sum(len(r["prompt"]) + len(r["response"]) > GIANT for r in rows)
    accounted = len(rows) + len(errors) + dups
    reasons = sorted({e["reason"].split(":")[0] for e in errors})
    happened = (f"{len(lines)} records → {len(rows)} rows ({giant_rows} with a {GIANT // 2**20} MiB field) + {len(errors)} errors "
                f"+ {dups} duplicate; reasons {reasons}; {len(no_reason)} errors without reason; largest raw kept {biggest_raw} chars")
    return record("bad data: broken corpus file", "truncated JSON, wrong types, empty/null/giant fields, invalid UTF-8, "
                  "duplicate, non-object, binary", "every record a row, an error with a reason, or a counted duplicate",
                  happened, abs(len(lines) - accounted) + len(no_reason), False, t0)
