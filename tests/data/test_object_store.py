"""SOMA experiments in object storage: read and built from ``s3://`` on a local moto S3 server.

The moto server runs in a subprocess: TileDB holds the GIL during its S3 requests, so a server
thread inside the test process could never answer them. Real AWS, GCS and Azure are not tested.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiledbsoma.io as soma_io
from vcell_testing import shared_file

from engine.data.object_store import soma_context, tiledb_config
from engine.data.read import read_source
from engine.errors import InputError

pytest.importorskip("moto", reason="the object-store tests need moto[server] (the dev extra)")
boto3 = pytest.importorskip("boto3")

BUCKET = "atlases"
_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                  "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                  "AWS_NO_SIGN_REQUEST", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def _start_moto(**env) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return server, endpoint
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("the moto S3 server did not start") from None
            time.sleep(0.1)


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def _fake_aws(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    for name in _AWS_VARIABLES:
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_REGION", "us-east-1")
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_CONFIG_FILE", os.devnull)  # nothing from the machine's ~/.aws
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture(scope="module")
def kang_small():
    import anndata as ad

    adata = ad.read_h5ad(shared_file("kang_ifnb_1k.h5ad"))
    adata = adata[:300].copy()
    expressed = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    adata = adata[:, np.sort(np.argsort(-expressed, kind="stable")[:2000])].copy()  # keep it quick
    return adata


@pytest.fixture(scope="module")
def s3(tmp_path_factory, kang_small):
    """A moto S3 server with the same SOMA experiment at ``s3://atlases/kang/exp`` and on local disk.

    Yields ``(endpoint, s3_uri, local_path)``; the fake AWS_* variables stay set for the module.
    """
    server, endpoint = _start_moto()
    try:
        with pytest.MonkeyPatch.context() as mp:
            _fake_aws(mp, endpoint)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            uri = f"s3://{BUCKET}/kang/exp"
            local = tmp_path_factory.mktemp("local") / "exp.soma"
            soma_io.from_anndata(uri, kang_small, measurement_name="RNA", X_layer_name="counts",
                                 context=soma_context(uri))
            soma_io.from_anndata(str(local), kang_small, measurement_name="RNA", X_layer_name="counts")
            yield endpoint, uri, local
    finally:
        _stop(server)


# ---------------------------------------------------------------- configuration (no server)


def test_tiledb_config_from_aws_variables():
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK",
           "AWS_DEFAULT_REGION": "eu-west-1"}
    assert tiledb_config("s3://b/k", env) == {
        "vfs.s3.aws_access_key_id": "AK", "vfs.s3.aws_secret_access_key": "SK",
        "vfs.s3.aws_session_token": "TOK", "vfs.s3.region": "eu-west-1"}
    config = tiledb_config("s3://b/k", {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1",
                                        "AWS_ENDPOINT_URL": "https://minio.example.org:9000/"})
    assert config == {"vfs.s3.region": "us-west-2", "vfs.s3.endpoint_override": "minio.example.org:9000",
                      "vfs.s3.scheme": "https", "vfs.s3.use_virtual_addressing": "false"}
    config = tiledb_config("S3://b/k", {"AWS_ENDPOINT_URL": "http://localhost:9000", "AWS_NO_SIGN_REQUEST": "YES"})
    assert config["vfs.s3.scheme"] == "http" and config["vfs.s3.region"] == "us-east-1"
    assert config["vfs.s3.no_sign_request"] == "true"
    assert tiledb_config("gs://b/k", {"GOOGLE_CLOUD_PROJECT": "p"}) == {"vfs.gcs.project_id": "p"}
    assert tiledb_config("/data/exp.soma", env) == {} and tiledb_config("tiledb://ns/exp", env) == {}
    assert soma_context("/data/exp.soma") is None
    with pytest.raises(InputError, match="AWS_ENDPOINT_URL is 'localhost:9000': give the S3 endpoint as a URL"):
        tiledb_config("s3://b/k", {"AWS_ENDPOINT_URL": "localhost:9000"})


# ---------------------------------------------------------------- moto S3


def test_read_source_from_s3_equals_local(s3):
    _, uri, local = s3
    remote, here = read_source(uri), read_source(local)
    assert remote.shape == here.shape == (300, 2000)
    pd.testing.assert_frame_equal(remote.obs, here.obs)
    pd.testing.assert_frame_equal(remote.var, here.var)
    assert abs(remote.X - here.X).max() == 0
    assert remote.uns["vcell_source"] == {"kind": "soma", "uri": uri, "measurement": "RNA", "layer": "counts"}


def test_streaming_build_from_s3_equals_local(s3, tmp_path):
    from engine.bundle.atlas import read_atlas
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions

    _, uri, local = s3
    options = dict(stream=True, n_landmarks=200, pca_sample=300, n_pcs=10)
    remote = read_atlas(build_atlas(uri, tmp_path / "s3.vcell", BuildOptions(**options)))
    here = read_atlas(build_atlas(local, tmp_path / "local.vcell", BuildOptions(**options)))
    assert remote.manifest.provenance.source == uri
    assert remote.n_cells == 300
    pd.testing.assert_frame_equal(remote.obs, here.obs)
    for name in ("cells.parquet", "genes.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(remote.path / name), pd.read_parquet(here.path / name))
    cells = np.arange(here.n_cells)
    for layer in ("counts", "lognorm"):
        assert abs(remote.expression(cells, None, layer=layer) - here.expression(cells, None, layer=layer)).max() == 0
    for name in ("segment_ptr", "indices", "data"):
        a, b = (np.load(Path(bundle.path) / "store" / "by_gene" / f"{name}.npy") for bundle in (remote, here))
        assert np.array_equal(a, b), name


def test_missing_key_or_bucket_is_a_clear_error(s3):
    endpoint, _, _ = s3
    missing = f"s3://{BUCKET}/kang/no-such-experiment"
    with pytest.raises(InputError) as info:
        read_source(missing)
    message = str(info.value)
    assert message.startswith(f"'{missing}' could not be opened as a TileDB-SOMA experiment from the S3 endpoint "
                              f"{endpoint}")
    assert "nothing there" in message and "check that the key exists" in message
    assert "AWS_ACCESS_KEY_ID" in message and "\n" not in message
    with pytest.raises(InputError, match=r"'s3://no-such-bucket/exp' could not be opened .*NoSuchBucket, HTTP 404"
                                         r".*check the bucket name"):
        read_source("s3://no-such-bucket/exp")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _fake_aws(monkeypatch, f"http://127.0.0.1:{port}")
    with pytest.raises(InputError, match=r"could not be opened .*curl error 7.*check the network connection and "
                                         r"AWS_ENDPOINT_URL"):
        read_source(f"s3://{BUCKET}/exp")


def test_bad_credentials_are_a_clear_error(monkeypatch):
    server, endpoint = _start_moto(INITIAL_NO_AUTH_ACTION_COUNT="0")  # moto checks credentials from the start
    try:
        _fake_aws(monkeypatch, endpoint)
        with pytest.raises(InputError, match=r"'s3://atlases/exp' could not be opened .*HTTP 403"
                                             r".*check the credentials \(AWS_ACCESS_KEY_ID"):
            read_source("s3://atlases/exp")
    finally:
        _stop(server)
