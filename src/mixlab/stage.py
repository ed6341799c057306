"""Atomic stage outputs with manifests: the mechanism every stage runs under.

Every stage writes into a hidden sibling ``.<name>.partial`` and renames it to ``<name>``
only when complete, with a ``_mixlab/manifest.json`` recording the resolved config, input
fingerprints, package versions, counts, wall time and statistics. The partial directory
survives a kill (so stages can resume from per-partition markers) but never looks finished.

Layout of every output: data (parquet and the stage's own artefacts) at the top, and
everything that is mixlab's bookkeeping (manifest, resume markers, scratch, memory-mapped
streams) under ``_mixlab/``, so pyarrow, polars, HF ``datasets`` and datatrove open the
data folders whole. Outputs written before this layout (a top-level ``manifest.json``)
still read.

``out_dir`` may be a URL (``s3://bucket/run/04_tokenize``): the stage body still writes a
local partial directory (in the cache, keyed by the URL, so a killed run resumes), which is
then uploaded with the manifest written last; a remote output is trusted only once its
manifest exists (see ``mixlab.storage.upload``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from mixlab import storage
from mixlab.config import config_to_dict
from mixlab.console import log
from mixlab.errors import InputError, MixlabError
from mixlab.storage import Location, is_url

MANIFEST = "manifest.json"
META = "_mixlab"  # mixlab's own files inside an output: manifest, markers, scratch, streams
WORK = f"{META}/work"  # scratch inside a partial dir (markers, signatures); deleted on success
PARTIAL_KEY = f"{META}/partial.json"  # what a partial dir is being built for (resume check)


def manifest_path(out_dir: Location) -> Location:
    """Where an output's manifest is (or, for an output of an older mixlab, was) written."""
    if is_url(out_dir):
        return storage.join(out_dir, META, MANIFEST)
    out_dir = Path(out_dir)
    current = out_dir / META / MANIFEST
    legacy = out_dir / MANIFEST
    return legacy if not current.is_file() and _is_mixlab_manifest(legacy) else current


def has_manifest(out_dir: Location) -> bool:
    """Whether `out_dir` holds a manifest (a finished output, or a foreign file to refuse)."""
    if is_url(out_dir):
        return storage.is_file(storage.join(out_dir, META, MANIFEST))
    out_dir = Path(out_dir)
    return (out_dir / META / MANIFEST).is_file() or _is_mixlab_manifest(out_dir / MANIFEST)


def _is_mixlab_manifest(path: Path) -> bool:
    """A top-level manifest.json an older mixlab wrote (has a stage and a config)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict) and isinstance(data.get("stage"), str) and isinstance(data.get("config"), dict)
    )


def fingerprint(path: Location) -> str:
    """A content fingerprint of a file or directory tree.

    A directory written by a mixlab stage is fingerprinted by its manifest (outputs are
    atomic, so the manifest identifies the content); anything else by hashing its bytes. A
    URL is never downloaded for this: see `storage.fingerprint_url`.
    """
    if is_url(path):
        return storage.fingerprint_url(str(path))
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    h = xxhash.xxh3_128()
    if path.is_dir() and has_manifest(path):
        h.update(b"manifest\0")
        h.update(manifest_path(path).read_bytes())
        return h.hexdigest()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        rel = file.name if path.is_file() else file.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 23):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in (
        "mixlab",
        "numpy",
        "polars",
        "pyarrow",
        "dask",
        "distributed",
        "datasketch",
        "tokenizers",
        "torch",
        "lightgbm",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclasses.dataclass
class Manifest:
    """What a finished stage output contains and how it was made."""

    stage: str
    config: dict[str, Any]
    inputs: dict[str, str]
    versions: dict[str, str]
    counts: dict[str, Any]
    stats: dict[str, Any]
    wall_s: float
    created: str
    # Every file of the output (relative path -> bytes), so "up to date" can mean "complete".
    outputs: dict[str, int] = dataclasses.field(default_factory=dict)
    path: Location | None = dataclasses.field(default=None, compare=False)  # a Path, or a URL str
    skipped: bool = dataclasses.field(default=False, compare=False)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("path")
        data.pop("skipped")
        return json.dumps(data, indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def load(cls, out_dir: Location) -> Manifest:
        out_dir = storage.location(out_dir)
        file = manifest_path(out_dir)
        try:
            raw = storage.read_if_exists(file) if is_url(file) else Path(file).read_bytes()
            if raw is None:
                raise FileNotFoundError(file)
            data = json.loads(raw)
        except FileNotFoundError:
            raise InputError(
                f"{out_dir}: no {META}/{MANIFEST}, so not a finished mixlab stage output; pass the output "
                "directory of the stage that makes it (or run that stage again)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{file}: corrupt manifest ({exc})") from None
        required = {"stage": str, "config": dict, "inputs": dict, "counts": dict, "stats": dict}
        if not isinstance(data, dict) or any(not isinstance(data.get(k), tp) for k, tp in required.items()):
            raise InputError(
                f"{file}: not a mixlab output (a mixlab output's manifest has "
                f"{', '.join(required)}); this directory was not written by mixlab"
            )
        fields = {f.name for f in dataclasses.fields(cls)} - {"path", "skipped"}
        values = {k: v for k, v in data.items() if k in fields}
        values.setdefault("versions", {})
        values.setdefault("wall_s", 0.0)
        values.setdefault("created", "")
        return cls(**values, path=out_dir)

    def local_dir(self) -> Path:
        """A local directory with this output's files: its own, or for a URL the cached copy."""
        if not is_url(self.path):
            return Path(self.path or ".")
        return Path(storage.materialise(str(self.path)))

    def missing_outputs(self) -> list[str]:
        """Files the manifest lists that are absent (or of another size) in its directory."""
        assert self.path is not None
        if is_url(self.path):
            there = storage.remote_listing(str(self.path))
            return [rel for rel, size in self.outputs.items() if there.get(rel) != size]
        missing = []
        for rel, size in self.outputs.items():
            file = self.path / rel
            if not file.is_file() or file.stat().st_size != size:
                missing.append(rel)
        return missing


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename): a kill never leaves it torn."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, keys sorted (the same data gives the same bytes)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default))


@dataclasses.dataclass
class StageDir:
    """Where a running stage writes: `out` becomes the output dir; `work` is scratch kept for resume."""

    out: Path
    work: Path


# The stage contract: run_<stage>(inputs: Inputs, cfg, out_dir: OutDir, client=None, *, force=False).
Inputs = Mapping[str, Any]  # input name -> a path, a list of paths, or None
OutDir = Path | str

StageBody = Callable[[StageDir], tuple[Mapping[str, Any], Mapping[str, Any]]]


def absolute_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's inputs with every path made absolute on the client.

    Dask workers may run in another directory (or on another machine), so nothing relative
    may leave the client. Values may be a path, a list of paths, or None; URLs are kept.
    """

    def absolute(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, Path)):
            return value if "://" in str(value) else Path(value).expanduser().absolute()
        if isinstance(value, Mapping):
            return {k: absolute(v) for k, v in value.items()}
        return [absolute(v) for v in value]

    return {name: absolute(value) for name, value in inputs.items()}


def partial_dir(out_dir: Location) -> Path:
    """Where a run builds `out_dir`: a hidden sibling, or for a URL a local directory in the
    cache keyed by the URL (so a killed run finds it again and resumes)."""
    if is_url(out_dir):
        return storage.cache_dir() / "partial" / storage.url_key(str(out_dir)) / ".out.partial"
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.partial")


def lock_file(out_dir: Location) -> Path:
    """The lock of one output: a sibling file, or for a URL a local file keyed by the URL.

    The lock of a URL output is local to this machine: it serialises runs on one machine only.
    Object stores have no lock, so two machines writing one URL are not stopped (the one
    whose manifest lands last wins, each upload whole).
    """
    if is_url(out_dir):
        return storage.cache_dir() / "locks" / f"{storage.url_key(str(out_dir))}.lock"
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.lock")


@contextlib.contextmanager
def output_lock(out_dir: Location) -> Iterator[None]:
    """An exclusive lock on one output: a second mixlab run into the same --out is refused.

    The lock is an ``fcntl`` lock on a sibling ``.<name>.lock`` file holding the owner's pid
    (for a URL, a file in the local cache; see `lock_file`). The kernel releases it when its
    process dies, so a lock file left by a killed run is stale by construction and simply
    taken over.
    """
    path = lock_file(out_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, out_dir)
    except PermissionError as exc:  # the first write of a run: where an unwritable --out shows
        raise MixlabError(
            f"{out_dir}: permission denied ({exc.filename or path.parent} is not writable); "
            "choose another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            # Unlink while still holding the lock; a run that opened the old file meanwhile sees
            # it is no longer the lock file (`_acquire`) and tries again.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(path: Path, out_dir: Location) -> int:
    """An fd holding the exclusive lock on the file now at `path`, or the refusal."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MixlabError(
                f"{out_dir}: another mixlab run is writing it (pid {owner}); wait for it to finish, "
                "or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its owner had just unlinked: lock the current one


def run_stage(
    stage: str,
    cfg: Any,
    inputs: Mapping[str, Path | str | Iterable[Path | str]],
    out_dir: Location,
    body: StageBody,
    *,
    force: bool = False,
    extra_key: Mapping[str, Any] | None = None,
) -> Manifest:
    """Run `body` into a partial directory, then publish it atomically with a manifest.

    - Same config and inputs as an existing output: nothing is done (the manifest is returned
      with ``skipped=True``).
    - Different config or inputs: refused unless ``force``; ``force`` always recomputes.
    - A partial directory left by a killed run with the same key is handed to `body` again so
      it can skip finished partitions; one from a different config is discarded.
    - A user error (MixlabError) discards the partial directory: nothing is left behind.
    - The whole run holds an exclusive lock on `out_dir` (see `output_lock`).
    - A URL `out_dir` is built locally and uploaded, manifest last (`storage.upload`).
    """
    out_dir = storage.location(out_dir)
    if not is_url(out_dir):
        out_dir = Path(out_dir).absolute()
    config = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    fingerprints = _fingerprint_inputs(inputs)
    key = {"stage": stage, "config": config, "inputs": fingerprints, **(extra_key or {})}
    with output_lock(out_dir):
        return _run_locked(stage, config, fingerprints, key, out_dir, body, force)


def _run_locked(
    stage: str,
    config: dict[str, Any],
    fingerprints: dict[str, str],
    key: dict[str, Any],
    out_dir: Location,
    body: StageBody,
    force: bool,
) -> Manifest:
    old = _existing_output(stage, config, fingerprints, out_dir, force)
    if old is not None:
        return old

    partial = partial_dir(out_dir)
    key_file = partial / PARTIAL_KEY
    if partial.exists():
        try:
            same = json.loads(key_file.read_text()) == json.loads(json.dumps(key, default=_json_default))
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            log(f"{stage}: resuming from {partial}")
        else:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / WORK).mkdir(parents=True, exist_ok=True)
    write_json(key_file, key)

    start = time.perf_counter()
    try:
        counts, stats = body(StageDir(out=partial, work=partial / WORK))
    except MixlabError:
        remove_tree(partial)
        raise
    shutil.rmtree(partial / WORK, ignore_errors=True)
    key_file.unlink()
    manifest = Manifest(
        stage=stage,
        config=config,
        inputs=fingerprints,
        versions=package_versions(),
        counts=dict(counts),
        stats=dict(stats),
        wall_s=round(time.perf_counter() - start, 3),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        outputs=_listing(partial),
    )
    # The manifest is written last: a directory with a manifest is a complete output.
    write_text_atomic(partial / META / MANIFEST, manifest.to_json())
    if is_url(out_dir):
        publish_url(partial, str(out_dir), manifest)
    else:
        publish(partial, out_dir)
    manifest.path = out_dir
    return manifest


def _listing(root: Path) -> dict[str, int]:
    manifest = root / META / MANIFEST
    files = sorted(p for p in root.rglob("*") if p.is_file() and p != manifest)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in files}


def _existing_output(
    stage: str, config: dict[str, Any], fingerprints: dict[str, str], out_dir: Location, force: bool
) -> Manifest | None:
    """The finished output to reuse (same stage, config and inputs, complete), else None.

    Refuses to overwrite an output of other settings without `force`, and never overwrites a
    directory mixlab did not write.
    """
    old = check_output_dir(out_dir)
    if old is None:
        return None
    if old.stage == stage and old.config == config and old.inputs == fingerprints and not force:
        missing = old.missing_outputs()
        if not missing:
            log(f"{stage}: {out_dir} is up to date (same config and inputs); nothing to do")
            old.skipped = True
            return old
        log(
            f"{stage}: {out_dir} is incomplete ({len(missing)} file(s) missing, e.g. {missing[0]}); rebuilding"
        )
        return None
    if not force:
        changed = [k for k in config if old.config.get(k) != config[k]]
        if old.stage != stage:
            what = f"stage differs (this is {stage})"
        else:
            what = f"config changed ({', '.join(changed)})" if changed else "inputs changed"
        raise MixlabError(
            f"{out_dir}: exists from an earlier {old.stage} run and the {what}; "
            "pass --force to overwrite or choose another --out"
        )
    return None


def check_output_dir(out_dir: Location) -> Manifest | None:
    """Refuse an --out mixlab may never write into; the manifest of an earlier mixlab output, if any.

    Cheap, so the CLI calls it before starting anything (a Dask cluster) that a refusal wastes.
    """
    if is_url(out_dir):
        return _check_output_url(str(out_dir))
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise MixlabError(f"{out_dir}: exists and is a file, not an output directory; choose another --out")
    if (out_dir / META / MANIFEST).is_file() or _is_mixlab_manifest(out_dir / MANIFEST):
        try:
            return Manifest.load(out_dir)
        except InputError as exc:
            raise MixlabError(
                f"{exc}; refusing to overwrite it: choose another --out or remove it yourself"
            ) from None
    if (out_dir / MANIFEST).is_file():
        raise MixlabError(
            f"{out_dir / MANIFEST}: not a mixlab output (no stage and config in it); refusing to "
            "overwrite it: choose another --out or remove it yourself"
        )
    if any(out_dir.iterdir()):
        # Refused even with --force: publishing would delete files mixlab did not write.
        raise MixlabError(
            f"{out_dir}: exists, is not empty and has no {META}/{MANIFEST} (not a mixlab stage output); "
            "choose another --out or remove it yourself"
        )
    return None


def _check_output_url(url: str) -> Manifest | None:
    """`check_output_dir` for a URL prefix: its manifest, None when empty or left by a killed
    upload (the upload marker says the prefix is mixlab's), else the refusal."""
    storage.check_writable(url)
    there = storage.remote_listing(url)
    if not there:
        return None
    if f"{META}/{MANIFEST}" in there:
        try:
            return Manifest.load(url)
        except InputError as exc:
            raise MixlabError(
                f"{exc}; refusing to overwrite it: choose another --out or remove it yourself"
            ) from None
    if storage.UPLOAD_MARKER in there:
        return None  # an upload that never finished: not trusted, replaced by this run
    raise MixlabError(
        f"{url}: holds files and no {META}/{MANIFEST} (not a mixlab stage output); "
        "choose another --out or remove them yourself"
    )


def remove_tree(path: Path, tries: int = 50) -> None:
    """Remove a directory even while a task that had already started writes its last file there.

    A file landing mid-removal only needs another pass. Tasks that write only into folders the
    client made (ingest's) cannot bring a removed tree back at all.
    """
    for _ in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)


def publish(src: Path, out_dir: Path) -> None:
    """Rename a finished directory into place, replacing (after the rename) any old one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if out_dir.exists():
        trash = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, trash)
    os.replace(src, out_dir)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def publish_url(src: Path, url: str, manifest: Manifest) -> None:
    """Upload a finished directory to `url` (manifest last), then keep it as the cached copy
    of that output, so a later stage reading `url` on this machine downloads nothing."""
    storage.upload(src, url, manifest.outputs)  # a failure leaves no remote manifest
    cached = storage.cached_output((src / META / MANIFEST).read_bytes())
    cached.parent.mkdir(parents=True, exist_ok=True)
    if cached.exists():
        shutil.rmtree(src, ignore_errors=True)
    else:
        os.replace(src, cached)
    shutil.rmtree(src.parent, ignore_errors=True)  # the URL's slot in cache/partial


def _fingerprint_inputs(inputs: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in inputs.items():
        if value is None:
            continue
        if isinstance(value, (str, Path)):
            out[name] = fingerprint(value)
        else:
            h = xxhash.xxh3_128()
            for item in value:
                h.update(fingerprint(item).encode())
            out[name] = h.hexdigest()
    return out


# --- per-task completion markers and derived randomness ----------------------------------


@dataclasses.dataclass(frozen=True)
class TaskMarkers:
    """Per-task completion markers in a stage's work dir, so a killed run resumes.

    A task (a partition, a pack of proxies) records its small JSON result under its name once
    its outputs are written; a rerun reads `finished()` and submits only the rest. Plain
    paths and JSON, so a Dask worker can mark its own task done.
    """

    root: str  # <work>/markers/<kind>

    @classmethod
    def in_work(cls, work: Path | str, kind: str) -> TaskMarkers:
        root = Path(work) / "markers" / kind
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root))

    def path(self, task: str) -> Path:
        return Path(self.root) / f"{task}.json"

    def mark(self, task: str, result: Mapping[str, Any]) -> None:
        write_json(self.path(task), dict(result))

    def get(self, task: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(task).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # a torn marker cannot exist (atomic writes), but a foreign file may

    def finished(self) -> dict[str, dict[str, Any]]:
        out = {}
        for file in sorted(Path(self.root).glob("*.json")):
            result = self.get(file.stem)
            if result is not None:
                out[file.stem] = result
        return out


def derive_seed(seed: int, *names: object, bits: int = 64) -> int:
    """A seed for one purpose and item (`derive_seed(seed, "init", run_id)`), from the global seed.

    Everything random in mixlab derives this way, so results depend on the seed and on the
    item's own names, never on partitioning, worker count or scheduling order.
    """
    key = xxhash.xxh3_64_intdigest("/".join(map(str, names)).encode(), seed=seed)
    return key & ((1 << bits) - 1)


def derive_rng(seed: int, *names: object) -> np.random.Generator:
    """A numpy Generator for one purpose and item, seeded by `derive_seed`."""
    return np.random.default_rng(derive_seed(seed, *names))
