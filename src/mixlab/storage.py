"""Where paths and URLs meet: the one module that knows about fsspec URLs (s3://, gs://, hf://, ...).

A local path stays a pathlib ``Path`` and behaves as it always did; a URL (any ``scheme://``,
``file://`` included) stays a ``str`` and is opened through fsspec with the process's
``storage_options`` (set from the YAML key ``storage_options:``). Also here: every storage
failure in one line naming the URL and the cause, the local cache that remote mixlab outputs
are materialised into (keyed by their manifest), and uploading a finished output to a URL
prefix with its manifest last.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import xxhash

from mixlab.errors import InputError, MixlabError

META = "_mixlab"  # as in mixlab.stage (which imports this module, so it cannot be imported here)
MANIFEST = f"{META}/manifest.json"
# Written to a URL prefix before any data: the prefix is mixlab's (a rerun may replace what a
# killed upload left there), but until MANIFEST exists beside it the output is not finished.
UPLOAD_MARKER = f"{META}/upload.json"

Location = Path | str  # a local path, or a URL kept as a str

# What each protocol needs installed, for the error when it is missing.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "hf": "hf"}

_options: dict[str, Any] = {}


# --- URLs and paths ------------------------------------------------------------------------------


def is_url(path: Any) -> bool:
    """True for `scheme://...` given as a str (a Path cannot hold a URL: it folds `//` into `/`)."""
    return isinstance(path, str) and "://" in path


def location(path: Location) -> Location:
    """A URL as its str, anything else as a Path."""
    return path if is_url(path) else Path(path)


def join(base: Location, *parts: str) -> Location:
    """`base / part / ...` for a local path or a URL."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(base).joinpath(*parts)


def name_of(path: Location) -> str:
    """The last component of a path or URL (`s3://b/run/04_tokenize` -> `04_tokenize`)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_url(path) else Path(path).name


# --- storage_options ---------------------------------------------------------------------------


def current_options() -> dict[str, Any]:
    """The storage_options in force for this process (see `using`)."""
    return dict(_options)


@contextlib.contextmanager
def using(storage_options: Mapping[str, Any] | None) -> Iterator[None]:
    """Use `storage_options` for every URL this process opens while the block runs.

    A module-level setting, not a context variable, so threads the stage starts see it too.
    Dask workers do not: a task that opens a URL takes the options in its arguments.
    """
    global _options
    saved = _options
    _options = dict(storage_options or {})
    try:
        yield
    finally:
        _options = saved


def options_for(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec keyword arguments for `url`: explicit ones, else the process's.

    `storage_options` may be flat (`{endpoint_url: ..., key: ...}`) or keyed by protocol
    (`{s3: {...}, gs: {...}}`), so one pipeline can read from two stores.
    """
    opts = dict(_options if storage_options is None else storage_options)
    protocol = url.split("://", 1)[0]
    if isinstance(opts.get(protocol), Mapping):
        return dict(opts[protocol])
    return {k: v for k, v in opts.items() if not isinstance(v, Mapping) or k in _NESTED_OPTIONS}


_NESTED_OPTIONS = {"client_kwargs", "config_kwargs", "s3_additional_kwargs", "headers"}


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for `url`; a protocol whose package is missing is one line."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **options_for(url, storage_options))
    except ImportError as exc:
        protocol = url.split("://", 1)[0]
        extra = EXTRAS.get(protocol)
        how = f"pip install 'mixlab[{extra}]'" if extra else f"install the fsspec backend for {protocol}://"
        raise MixlabError(
            f"{url}: {protocol}:// needs a package that is not installed ({exc}); {how}"
        ) from None
    except ValueError as exc:
        raise MixlabError(f"{url}: not a usable URL ({exc})") from None
    except TypeError as exc:
        raise MixlabError(f"{url}: storage_options do not fit this filesystem ({exc})") from None


# --- errors in one line ----------------------------------------------------------------------------


def storage_error(url: str, exc: BaseException) -> MixlabError:
    """What went wrong reaching `url`, as one line naming the URL and the cause."""
    name = type(exc).__name__
    text = " ".join(str(exc).split()) or name
    low = text.lower()
    chain = [type(e).__name__ for e in _causes(exc)]
    if name in ("NoCredentialsError", "DefaultCredentialsError") or "unable to locate credentials" in low:
        aws = url.startswith(("s3://", "s3a://"))
        return InputError(
            f"{url}: no credentials found; set them under storage_options in the YAML"
            + (", or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an AWS profile)" if aws else "")
        )
    if (
        any(n in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") for n in chain)
        or "could not connect to the endpoint" in low
        or (
            isinstance(exc, OSError)
            and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT)
        )
    ):
        return InputError(
            f"{url}: cannot reach the storage endpoint ({text}); check endpoint_url under "
            "storage_options and that the service is up"
        )
    if "bucket does not exist" in low or "nosuchbucket" in low:
        return InputError(f"{url}: no such bucket ({text}); check the bucket name and the endpoint")
    if isinstance(exc, PermissionError) or "access denied" in low or "forbidden" in low:
        return InputError(
            f"{url}: permission denied ({text}); check the credentials in storage_options and "
            "what they may read and write"
        )
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{url}: no such file or directory")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"{url}: is a folder, expected a file")
    return InputError(f"{url}: storage error ({name}: {text})")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@contextlib.contextmanager
def worded(url: str) -> Iterator[None]:
    """Turn any storage exception raised in the block into `storage_error(url, ...)`."""
    try:
        yield
    except MixlabError:
        raise
    except Exception as exc:  # fsspec backends raise OSError, botocore, aiohttp and their own types
        if not _is_storage_exception(exc):
            raise
        raise storage_error(url, exc) from None


def _is_storage_exception(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or module in (
        "botocore",
        "aiobotocore",
        "aiohttp",
        "s3fs",
        "gcsfs",
        "huggingface_hub",
        "google",
        "requests",
        "fsspec",
    )


# --- reading --------------------------------------------------------------------------------------


def open_input(
    url: Location,
    mode: str = "rb",
    storage_options: Mapping[str, Any] | None = None,
    compression: str | None = None,
) -> Any:
    """An open file object for a path or URL (use it as a context manager).

    `compression`: None, "infer" (from the name) or an fsspec codec ("gzip", "zstd", "bz2", "xz").
    Opening errors are one line; errors while reading are the caller's to word.
    """
    import fsspec

    if not is_url(url):
        try:
            return fsspec.open(str(url), mode, compression=compression).open()
        except FileNotFoundError:
            raise InputError(f"{url}: no such file or directory") from None
        except PermissionError:
            raise InputError(f"{url}: permission denied") from None
    url = str(url)
    fs, path = filesystem(url, storage_options)
    with worded(url):
        handle = fs.open(path, mode)
        if compression is None:
            return handle
        from fsspec.compression import compr
        from fsspec.utils import infer_compression

        codec = infer_compression(path) if compression == "infer" else compression
        if codec is None:
            return handle
        return compr[codec](handle, mode=mode[0])


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    with worded(url):
        return fs.cat_file(path)


def read_if_exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes | None:
    """The bytes of `url`, or None when there is no such file (other failures are one line)."""
    fs, path = filesystem(url, storage_options)
    with worded(url):
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None


def info(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """fsspec's info (size, type, and etag / mtime where the store has them)."""
    fs, path = filesystem(url, storage_options)
    with worded(url):
        return fs.info(path)


def exists(url: Location, storage_options: Mapping[str, Any] | None = None) -> bool:
    if not is_url(url):
        return Path(url).exists()
    fs, path = filesystem(str(url), storage_options)
    with worded(str(url)):
        return bool(fs.exists(path))


def is_file(url: Location, storage_options: Mapping[str, Any] | None = None) -> bool:
    if not is_url(url):
        return Path(url).is_file()
    fs, path = filesystem(str(url), storage_options)
    with worded(str(url)):
        return bool(fs.isfile(path))


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def expand(
    url: Location, glob: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> list[Location]:
    """The files `url` names: itself if a file, else every file under it (recursively, sorted).

    Names starting with "." or "_" (mixlab's `_mixlab/`, hidden files) are skipped inside a
    folder. `glob` is relative to the folder (`**/*.py`). Local paths give Paths; URLs give
    full URLs (protocol kept), so workers can open them without knowing the filesystem.
    """
    if not is_url(url):
        root = Path(url)
        if not root.exists():
            raise InputError(f"{root}: no such file or directory")
        if root.is_file():
            return [root]
        found = root.glob(glob) if glob else root.rglob("*")
        return sorted(p for p in found if p.is_file() and not _hidden(p.relative_to(root).as_posix()))
    url = str(url)
    fs, path = filesystem(url, storage_options)
    with worded(url):
        kind = fs.info(path).get("type")
        if kind != "directory":
            return [url]
        base = path.rstrip("/")
        if glob:
            found = [p for p in fs.glob(f"{base}/{glob}") if fs.isfile(p)]
        else:
            found = list(fs.find(base))
    rels = sorted(p[len(base) + 1 :] for p in found if p.startswith(base + "/"))
    return [join(url, rel) for rel in rels if not _hidden(rel)]


def fingerprint_url(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """A fingerprint of what `url` holds, from the store's metadata, never its bytes.

    A mixlab output (or a file or folder inside one) by its manifest; anything else by
    (name, size, etag or mtime) of every file.
    """
    h = xxhash.xxh3_128()
    found = output_root(url, storage_options)
    if found is not None:
        root, rel, manifest = found
        h.update(b"manifest\0" + manifest + b"\0" + rel.encode())
        return h.hexdigest()
    fs, path = filesystem(url, storage_options)
    with worded(url):
        top = fs.info(path)
        entries = {"": top} if top.get("type") != "directory" else fs.find(path.rstrip("/"), detail=True)
    base = path.rstrip("/")
    for name in sorted(entries):
        meta = entries[name]
        rel = name[len(base) + 1 :] if name.startswith(base + "/") else ""
        version = next(
            (
                str(meta[k])
                for k in (
                    "ETag",
                    "etag",
                    "md5",
                    "crc32c",
                    "mtime",
                    "LastModified",
                    "last_modified",
                    "created",
                )
                if meta.get(k)
            ),
            "",
        )
        h.update(f"{rel}\0{meta.get('size')}\0{version}\0".encode())
    return h.hexdigest()


# --- remote mixlab outputs: find, materialise ---------------------------------------------------


def output_root(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, str, bytes] | None:
    """(output URL, path inside it, manifest bytes) of the mixlab output `url` is or lies in; else None.

    Looks for `_mixlab/manifest.json` at `url` and then at each parent, up to the bucket.
    """
    fs, path = filesystem(url, storage_options)
    lead = "/" if path.startswith("/") else ""  # file:// and memory:// paths are absolute
    parts = path.strip("/").split("/")
    url_parts = url.rstrip("/").split("/")
    with worded(url):
        for depth in range(len(parts), 0, -1):
            root_path = lead + "/".join(parts[:depth])
            try:
                manifest = fs.cat_file(f"{root_path}/{MANIFEST}")
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            inner = len(parts) - depth  # components of `url` below the output's root
            root = "/".join(url_parts[: len(url_parts) - inner])
            return root, "/".join(parts[depth:]), manifest
    return None


_ORIGINS: dict[Path, str] = {}  # local copies this process made or used -> the URL they hold


def origin(path: Location) -> str:
    """How to name `path` to a user: the URL a local cache copy stands for, else the path itself.

    Stages record where their inputs came from (fit.json's prior source, distill's teacher);
    for an input read from a bucket that is the URL, not the cache directory it was read from.
    """
    if is_url(path):
        return str(path)
    path = Path(path)
    for local, url in _ORIGINS.items():
        if path == local or local in path.parents:
            rel = path.relative_to(local).as_posix()
            return url if rel == "." else str(join(url, rel))
    return str(path)


def cache_dir() -> Path:
    """Where remote outputs are materialised and URL outputs are built: $MIXLAB_CACHE or ~/.cache/mixlab.

    Safe to delete whenever no mixlab run is going.
    """
    return Path(os.environ.get("MIXLAB_CACHE") or Path.home() / ".cache" / "mixlab").expanduser()


def url_key(url: str) -> str:
    """A file name for one URL (its lock, its local partial dir)."""
    return xxhash.xxh3_64_hexdigest(url.rstrip("/").encode())


def cached_output(manifest: bytes) -> Path:
    """Where the output with this manifest is (or will be) kept locally: content-addressed."""
    return cache_dir() / "outputs" / xxhash.xxh3_128_hexdigest(manifest)


def materialise(url: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    """A local path with what `url` holds, when `url` is (or lies in) a mixlab output; else `url`.

    The whole output is downloaded once into the cache under its manifest's hash (a later
    run, or a stage whose output this machine published, finds it there), then the local
    path of `url` inside it is returned. Only the files the manifest lists are fetched, and
    their sizes checked, so a half-uploaded output is never read.
    """
    found = output_root(url, storage_options)
    if found is None:
        return _materialise_run(url, storage_options) or url
    root, rel, manifest = found
    local = cached_output(manifest)
    if not local.is_dir():
        _download(root, manifest, local, storage_options)
    _ORIGINS[local] = root
    return local / rel if rel else local


RUN_FILES = ("run.json", "pipeline.yaml")  # what `mixlab pipeline run` keeps at a run root


def _materialise_run(url: str, storage_options: Mapping[str, Any] | None) -> Path | None:
    """A local view of a pipeline run root at `url` (it has run.json), else None.

    Each finished stage output under it is materialised (see `materialise`) and linked into
    ``<cache>/runs/<url key>/`` beside copies of the run's own files, so `mixlab report`
    reads a run on a store like a local one. Unfinished outputs are left out.
    """
    fs, base = filesystem(url, storage_options)
    base = base.rstrip("/")
    with worded(url):
        run_json = read_if_exists(join(url, RUN_FILES[0]), storage_options)
        if run_json is None:
            return None
        children = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)]
    local = cache_dir() / "runs" / url_key(url)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    for name in RUN_FILES:
        raw = run_json if name == RUN_FILES[0] else read_if_exists(join(url, name), storage_options)
        if raw is not None:
            (local / name).write_bytes(raw)
    for name in sorted(children):
        if name in RUN_FILES or name.startswith((".", "_")):
            continue
        child = join(url, name)
        manifest = read_if_exists(join(child, MANIFEST), storage_options)
        if manifest is None:
            continue
        target = materialise(child, storage_options)
        (local / name).symlink_to(target, target_is_directory=True)
    return local


def _download(root: str, manifest: bytes, local: Path, storage_options: Mapping[str, Any] | None) -> None:
    try:
        listing: dict[str, int] = json.loads(manifest).get("outputs") or {}
    except ValueError:
        raise InputError(f"{root}/{MANIFEST}: corrupt manifest; run the stage that makes it again") from None
    fs, base = filesystem(root, storage_options)
    base = base.rstrip("/")
    tmp = local.with_name(f".{local.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with worded(root):
        if not listing:  # an output of an older mixlab: everything under it but the upload marker
            listing = {
                p[len(base) + 1 :]: int(meta.get("size") or 0)
                for p, meta in fs.find(base, detail=True).items()
                if p[len(base) + 1 :] not in (MANIFEST, UPLOAD_MARKER)
            }
        remote = [f"{base}/{rel}" for rel in listing]
        paths = [tmp / rel for rel in listing]
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
        if remote:
            fs.get(remote, [str(p) for p in paths])
    for rel, size in listing.items():
        file = tmp / rel
        if not file.is_file() or file.stat().st_size != size:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(
                f"{root}: {rel} is missing or of another size than its manifest says; the output is "
                "incomplete: run the stage that makes it again"
            )
    (tmp / META).mkdir(parents=True, exist_ok=True)
    (tmp / MANIFEST).write_bytes(manifest)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, local)
    except OSError:  # another process materialised it meanwhile: same content by construction
        shutil.rmtree(tmp, ignore_errors=True)


def localize(value: Any, storage_options: Mapping[str, Any] | None = None, *, raw: bool = True) -> Any:
    """A stage's input value with every URL of a mixlab output materialised (see `materialise`).

    Lists and mappings are walked; local paths are kept. A URL that is not a mixlab output is
    kept as it is when `raw` (a corpus in a bucket, which the workers open themselves); else
    (inputs only mixlab reads, such as a mixture.json or a tokenizer folder) it is downloaded
    into the cache under its metadata fingerprint (`download`).
    """
    if value is None:
        return None
    if is_url(value):
        local = materialise(str(value), storage_options)
        return local if raw or not is_url(local) else download(str(value), storage_options)
    if isinstance(value, (str, Path)):
        return value
    if isinstance(value, Mapping):
        return {k: localize(v, storage_options, raw=raw) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(localize(v, storage_options, raw=raw) for v in value)
    return value


def download(url: str, storage_options: Mapping[str, Any] | None = None) -> Path:
    """A local copy of the file or folder at `url` (not a mixlab output), in the cache under
    its metadata fingerprint, so a changed file is fetched again and an unchanged one never."""
    local = cache_dir() / "files" / fingerprint_url(url, storage_options) / name_of(url)
    _ORIGINS[local] = url
    if local.exists():
        return local
    fs, path = filesystem(url, storage_options)
    tmp = local.parent.with_name(f".{local.parent.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with worded(url):
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(tmp / name_of(url)) + "/", recursive=True)
        else:
            fs.get_file(path, str(tmp / name_of(url)))
    try:
        os.replace(tmp, local.parent)
    except OSError:  # another process fetched it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return local


# --- writing: publish a local directory to a URL prefix, manifest last ---------------------------


def remote_listing(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Every file under `url` (relative path -> size); {} when nothing is there."""
    fs, base = filesystem(url, storage_options)
    base = base.rstrip("/")
    with worded(url):
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
    return {
        p[len(base) + 1 :]: int(meta.get("size") or 0)
        for p, meta in found.items()
        if p.startswith(base + "/")
    }


def check_writable(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse, before any work, a URL output that cannot be written: an object store's bucket
    that does not exist (or cannot be reached), a local folder (file://) without write access."""
    fs, path = filesystem(url, storage_options)
    with worded(url):
        if _is_local(fs):
            parent = Path(path)
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            import tempfile

            with tempfile.TemporaryFile(dir=parent):  # a real write: access() is blind to read-only mounts
                pass
            return
        if _protocol(fs) not in BUCKET_STORES:
            return  # memory://, hf://...: nothing to check before writing
        bucket = path.strip("/").split("/", 1)[0]
        try:
            fs.info(bucket)  # not exists(): it answers False for refused credentials too
        except FileNotFoundError:
            raise FileNotFoundError("The specified bucket does not exist") from None


BUCKET_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def _protocol(fs: Any) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _is_local(fs: Any) -> bool:
    return _protocol(fs) in ("file", "local")


def upload(
    local: Path, url: str, files: Iterable[str], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Publish the finished output in `local` to the prefix `url`, its manifest last.

    Order, so that at every instant a reader either trusts a complete output or none: the
    old manifest (if any) is deleted first, the upload marker claims the prefix, files of an
    older output that the new one lacks are deleted, the new files are uploaded, and the
    manifest goes last. A kill anywhere before the last step leaves no manifest.
    """
    fs, base = filesystem(url, storage_options)
    base = base.rstrip("/")
    files = list(files)
    with worded(url):
        old = remote_listing(url, storage_options)
        if MANIFEST in old:
            fs.rm_file(f"{base}/{MANIFEST}")
        fs.pipe_file(f"{base}/{UPLOAD_MARKER}", json.dumps({"pid": os.getpid()}).encode())
        stale = [f"{base}/{rel}" for rel in old if rel not in files and rel not in (MANIFEST, UPLOAD_MARKER)]
        if stale:
            fs.rm(stale)
        if files:  # in one batch (s3fs and gcsfs send them concurrently); it returns once all are there
            fs.put([str(local / rel) for rel in files], [f"{base}/{rel}" for rel in files])
        fs.put_file(str(local / MANIFEST), f"{base}/{MANIFEST}")


def write_text(url: Location, text: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a small text file (run.json, a copy of the pipeline) to a path or URL."""
    if not is_url(url):
        raise TypeError("write_text: local paths are written with mixlab.stage.write_text_atomic")
    fs, path = filesystem(str(url), storage_options)
    with worded(str(url)):
        fs.pipe_file(path, text.encode())
