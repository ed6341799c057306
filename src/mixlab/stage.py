"""Atomic stage outputs with manifests: the mechanism every stage runs under.

Every stage writes into a hidden sibling ``.<name>.partial`` and renames it to ``<name>``
only when complete, with a ``manifest.json`` recording the resolved config, input
fingerprints, package versions, counts, wall time and statistics. The partial directory
survives a kill (so stages can resume from per-partition markers) but never looks finished.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import xxhash

from mixlab.config import config_to_dict
from mixlab.console import log
from mixlab.errors import InputError, MixlabError

MANIFEST = "manifest.json"


WORK = "_work"  # scratch inside a partial dir (markers, signatures); deleted on success


def fingerprint(path: Path | str) -> str:
    """A content fingerprint of a file or directory tree.

    A directory written by a mixlab stage is fingerprinted by its manifest (outputs are
    atomic, so the manifest identifies the content); anything else by hashing its bytes.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    h = xxhash.xxh3_128()
    if path.is_dir() and (path / MANIFEST).is_file():
        h.update(b"manifest\0")
        h.update((path / MANIFEST).read_bytes())
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
    path: Path | None = dataclasses.field(default=None, compare=False)
    skipped: bool = dataclasses.field(default=False, compare=False)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("path")
        data.pop("skipped")
        return json.dumps(data, indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def load(cls, out_dir: Path | str) -> Manifest:
        out_dir = Path(out_dir)
        try:
            data = json.loads((out_dir / MANIFEST).read_text())
        except FileNotFoundError:
            raise InputError(f"{out_dir}: no {MANIFEST}; not a finished mixlab stage output") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{out_dir / MANIFEST}: corrupt manifest ({exc})") from None
        fields = {f.name for f in dataclasses.fields(cls)} - {"path", "skipped"}
        return cls(**{k: v for k, v in data.items() if k in fields}, path=out_dir)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


@dataclasses.dataclass
class StageDir:
    """Where a running stage writes: `out` becomes the output dir; `work` is scratch kept for resume."""

    out: Path
    work: Path


StageBody = Callable[[StageDir], tuple[Mapping[str, Any], Mapping[str, Any]]]


def partial_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.partial")


def run_stage(
    stage: str,
    cfg: Any,
    inputs: Mapping[str, Path | str | Iterable[Path | str]],
    out_dir: Path | str,
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
    """
    out_dir = Path(out_dir)
    config = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    fingerprints = _fingerprint_inputs(inputs)
    key = {"stage": stage, "config": config, "inputs": fingerprints, **(extra_key or {})}

    if out_dir.exists():
        if not out_dir.is_dir():
            raise MixlabError(
                f"{out_dir}: exists and is a file, not an output directory; choose another --out"
            )
        if (out_dir / MANIFEST).is_file():
            old = Manifest.load(out_dir)
            if old.stage == stage and old.config == config and old.inputs == fingerprints and not force:
                log(f"{stage}: {out_dir} is up to date (same config and inputs); nothing to do")
                old.skipped = True
                return old
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
        elif any(out_dir.iterdir()):
            # Refused even with --force: publishing would delete files mixlab did not write.
            raise MixlabError(
                f"{out_dir}: exists, is not empty and has no {MANIFEST} (not a mixlab stage output); "
                "choose another --out or remove it yourself"
            )

    partial = partial_dir(out_dir)
    key_file = partial / "_partial.json"
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
    (partial / WORK).mkdir(exist_ok=True)
    write_json(key_file, key)

    start = time.perf_counter()
    try:
        counts, stats = body(StageDir(out=partial, work=partial / WORK))
    except MixlabError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    manifest = Manifest(
        stage=stage,
        config=config,
        inputs=fingerprints,
        versions=package_versions(),
        counts=dict(counts),
        stats=dict(stats),
        wall_s=round(time.perf_counter() - start, 3),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    shutil.rmtree(partial / WORK, ignore_errors=True)
    key_file.unlink()
    (partial / MANIFEST).write_text(manifest.to_json())
    publish(partial, out_dir)
    manifest.path = out_dir
    return manifest


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
