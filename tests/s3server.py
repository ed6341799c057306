"""A real S3 API server for the tests: moto's standalone server on 127.0.0.1, reached through s3fs.

Not a patched client: s3fs speaks HTTP to the server exactly as it would to AWS, so
endpoints, buckets, listings and errors are the real protocol's. Use the `s3` fixture
(a fresh bucket per test, on one server per session):

    def test_x(s3):
        run_stage(..., f"{s3.url}/out", ...)   # with storage.using(s3.options)
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
pytest.importorskip("s3fs", reason="the S3 tests need s3fs")

KEY, SECRET = "testing", "testing"  # moto accepts any credentials


@dataclasses.dataclass(frozen=True)
class S3:
    """One bucket on the local S3 server: `url` is s3://<bucket>, `options` the storage_options."""

    endpoint: str
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET}

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.options, skip_instance_cache=True)

    def yaml(self) -> str:
        """The same options as a YAML `storage_options:` block."""
        return f"storage_options: {{endpoint_url: '{self.endpoint}', key: {KEY}, secret: {SECRET}}}\n"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's threaded server on a free port of 127.0.0.1, for the whole session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[S3]:
    """A fresh bucket on the local server, and a fresh mixlab cache (so nothing is found locally)."""
    import s3fs

    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "mixlab-cache"))
    bucket = f"mixlab-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=KEY, secret=SECRET, skip_instance_cache=True)
    fs.mkdir(bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    yield S3(s3_endpoint, bucket)
    s3fs.S3FileSystem.clear_instance_cache()
