"""Storage: one way to read and write local paths and ``s3://`` URIs, and atomic publishing.

A published dataset (or any output folder) is trusted only through its manifest:

    <uri>/manifest.json        written last; lists files, row counts, checksums, config, taxonomy
    <uri>/data/part-*.parquet  what the manifest lists (nothing else in the folder is trusted)

Stages write through the stage contract (treasure.stage): files under
``<uri>/_staging/<config key>/publish-<attempt>/`` first, moved into place after the work
returned, then the manifest with the checksums of what storage now holds. A crash before the
manifest leaves no committed output, so readers (``read_manifest``) never see a partial dataset
as complete.

S3 settings come from the environment (never from config files): ``AWS_ENDPOINT_URL`` (e.g. a moto
server on 127.0.0.1), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

MANIFEST = "manifest.json"


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def scheme_prefix(uri: str) -> str:
    """"s3://", "hf://", ... for a URI; "" for a local path."""
    return str(uri).split("://", 1)[0] + "://" if "://" in str(uri) else ""


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path within it) for a local path, an s3:// URI, or any other URI that
    pyarrow (file://, gs://, hdfs://) or an installed fsspec implementation (hf://, az://, ...) resolves."""
    uri = str(uri)
    if "://" in uri and not is_s3(uri):
        return _other_filesystem(uri)
    if is_s3(uri):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
            # Virtual-host addressing needs DNS for bucket names; a local endpoint has none.
            kwargs["force_virtual_addressing"] = False
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):]
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def _other_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow as pa

    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    import fsspec.core  # hf:// (huggingface_hub), az://, ... whatever fsspec has registered and installed

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as e:
        raise ValueError(f"{uri}: no filesystem for this URI scheme ({e})") from e
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *[p.strip("/") for p in parts]])


def read_bytes(uri: str) -> bytes:
    """The file's bytes as stored (pyarrow would gunzip a `.gz` by default; readers decide that)."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file. Local paths are written atomically: a temporary file in the same folder,
    fsync, `os.replace`, fsync of the folder, so a crash leaves the old file or the new one, never a
    torn one (S3 PUTs are atomic already)."""
    fs, path = filesystem(uri)
    if not is_s3(uri):
        _write_local_atomic(Path(path), data)
        return
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def _write_local_atomic(path: Path, data: bytes) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def read_json_or_none(uri: str, what: str) -> Any | None:
    """A JSON file that marks something as finished (a manifest, a shard's done.json), or None when it
    is missing or torn: a torn marker (a crash mid-write by an older writer, a full disk) means the
    thing it marks is not finished, never a crash of every later run."""
    import logging

    if not exists(uri):
        return None
    try:
        return json.loads(read_bytes(uri))
    except (ValueError, UnicodeDecodeError) as e:
        logging.getLogger(__name__).warning("%s %s is unreadable (%s); treating it as not committed", what, uri, e)
        return None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str) -> list[str]:
    """URIs of all files under `uri` (recursive), sorted."""
    return [f for f, _, _ in list_file_infos(uri)]


def list_dirs(uri: str) -> list[str]:
    """URIs of the folders directly under `uri`, sorted (none when `uri` does not exist)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(join(uri, i.path.rstrip("/").rsplit("/", 1)[-1]) for i in infos if i.type == pafs.FileType.Directory)


def list_file_infos(uri: str) -> list[tuple[str, int, int]]:
    """(URI, size in bytes, modification time in ns) of every file under `uri` (recursive), sorted."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = scheme_prefix(uri)
    return sorted((prefix + i.path, i.size, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File)


GLOB_CHARS = "*?["


def expand(uri: str) -> list[tuple[str, str]]:
    """(URI, path below the base) of the files `uri` names, sorted: itself (named by its last part)
    when it is a file, every file under it when it is a
    folder, every match when it holds a glob (`*` and `?` within a path part, `**` across parts,
    `[...]` sets). Hidden files and folders (`.name`, `_name`) under a folder or glob are left out,
    as Spark and Ray Data do (`_SUCCESS`, `.crc`). Raises FileNotFoundError when nothing matches.

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["a/1.jsonl", "a/b/2.jsonl", "a/_SUCCESS", "c.csv"]:
    ...     (root / name).parent.mkdir(parents=True, exist_ok=True); _ = (root / name).write_text("x")
    >>> [relative for _, relative in expand(f"{root}/**/*.jsonl")]
    ['a/1.jsonl', 'a/b/2.jsonl']
    >>> [relative for _, relative in expand(f"{root}/a")]
    ['1.jsonl', 'b/2.jsonl']
    """
    import re

    uri = str(uri)
    parts = uri.split("/")
    wild = next((i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS)), None)
    base = uri if wild is None else "/".join(parts[:wild])
    fs, path = filesystem(base)
    kind = fs.get_file_info(path).type
    if wild is None and kind == pafs.FileType.File:
        return [(uri, uri.rstrip("/").rsplit("/", 1)[-1])]
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or folder" if wild is None else f"{uri}: {base} does not exist")
    root = scheme_prefix(base) + path.rstrip("/")
    files = [(f, f[len(root):].strip("/")) for f, _, _ in list_file_infos(base)]
    visible = [(f, rel) for f, rel in files if not any(p[:1] in "._" for p in rel.split("/"))]
    if wild is not None:
        regex = _glob_regex(parts[wild:])
        visible = [(f, rel) for f, rel in visible if re.fullmatch(regex, rel)]
    if not visible:
        raise FileNotFoundError(f"{uri}: matches no file")
    return visible


def _glob_regex(parts: list[str]) -> str:
    """A regex for the path below the glob's base: `*`, `?` stay within a part, `**` spans parts."""
    import re

    out = ""
    for i, part in enumerate(parts):
        if part == "**":
            out += "(?:[^/]+/)*" if i < len(parts) - 1 else ".*"
            continue
        tokens = re.split(r"(\*|\?|\[[^\]]+\])", part)
        out += "".join("[^/]*" if t == "*" else "[^/]" if t == "?" else t.replace("[!", "[^") if t.startswith("[")
                       else re.escape(t) for t in tokens)
        out += "/" if i < len(parts) - 1 else ""
    return out


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def sha256(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


def read_manifest(uri: str) -> dict | None:
    """The committed manifest of an output folder, or None when nothing is committed there."""
    return read_json_or_none(join(uri, MANIFEST), "manifest")


def commit_manifest(uri: str, files: list[str], extra: dict[str, Any], verify: bool = True) -> dict:
    """Verify `files` (URIs under `uri`) and write the manifest last; returns it.

    `extra` carries row counts, config, taxonomy version, lineage. Checksums are computed from
    what storage now holds, so a file truncated by a failed upload fails here, not at read time.
    """
    entries = []
    for f in files:
        if not str(f).startswith(str(uri).rstrip("/") + "/"):
            raise ValueError(f"{f} is not under {uri}")
        entries.append({"path": f[len(str(uri).rstrip("/")) + 1:], "sha256": sha256(f) if verify else None})
    manifest = {"committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": entries, **extra}
    manifest["manifest_id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]
    write_bytes(join(uri, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    return manifest


def verify_manifest(uri: str, manifest: dict) -> None:
    """Raise ValueError if any listed file is missing or differs from its checksum."""
    for entry in manifest["files"]:
        f = join(uri, entry["path"])
        if not exists(f):
            raise ValueError(f"committed file missing: {f}")
        if entry.get("sha256") and sha256(f) != entry["sha256"]:
            raise ValueError(f"checksum mismatch: {f}")
