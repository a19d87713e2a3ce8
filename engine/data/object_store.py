"""TileDB settings for SOMA experiments kept in object storage (S3, GCS, Azure).

:func:`soma_context` turns the environment variables users already set for their cloud tools
into a ``tiledbsoma.SOMATileDBContext``; every ``tiledbsoma`` open of a URI in
:mod:`engine.data.soma` and :mod:`engine.data.blocks` passes it. Local paths need none.

S3 (and S3-compatible stores such as MinIO): ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (an endpoint other than AWS: path-style addressing, ``http``/``https``
taken from the URL) and ``AWS_NO_SIGN_REQUEST=true`` (public buckets, no credentials). Unset
credentials are left to the AWS SDK's own chain (profile files, instance roles).
GCS: ``GOOGLE_CLOUD_PROJECT``; Azure: ``AZURE_STORAGE_ACCOUNT``, ``AZURE_STORAGE_KEY``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from engine.errors import InputError

OBJECT_STORE_SCHEMES = ("s3", "gcs", "gs", "azure")
"""URI schemes TileDB reads from object storage (``tiledb://`` is TileDB Cloud, configured apart)."""

_S3_ENV = (  # (environment variables, first set wins) -> TileDB key
    (("AWS_ACCESS_KEY_ID",), "vfs.s3.aws_access_key_id"),
    (("AWS_SECRET_ACCESS_KEY",), "vfs.s3.aws_secret_access_key"),
    (("AWS_SESSION_TOKEN",), "vfs.s3.aws_session_token"),
    (("AWS_REGION", "AWS_DEFAULT_REGION"), "vfs.s3.region"),
)
_OTHER_ENV = (
    (("GOOGLE_CLOUD_PROJECT",), "vfs.gcs.project_id"),
    (("AZURE_STORAGE_ACCOUNT",), "vfs.azure.storage_account_name"),
    (("AZURE_STORAGE_KEY",), "vfs.azure.storage_account_key"),
)
_TRUE = ("1", "true", "yes", "on")


def scheme(uri: str | os.PathLike) -> str:
    """The lower-case URI scheme of ``uri`` (``""`` for a local path)."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", os.fspath(uri))
    return match.group(1).lower() if match else ""


def is_object_store(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names object storage (``s3://``, ``gcs://``/``gs://``, ``azure://``)."""
    return scheme(uri) in OBJECT_STORE_SCHEMES


def tiledb_config(uri: str | os.PathLike, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """TileDB configuration for reading ``uri``, taken from ``environ`` (default ``os.environ``).

    Returns ``{}`` for local paths and for URIs other than object storage.

    Raises
    ------
    InputError
        ``AWS_ENDPOINT_URL`` is not an ``http://`` or ``https://`` URL.
    """
    if not is_object_store(uri):
        return {}
    env = os.environ if environ is None else environ
    config: dict[str, str] = {}
    for names, key in _S3_ENV + _OTHER_ENV:
        value = next((env[name] for name in names if env.get(name)), None)
        if value:
            config[key] = value
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(f"AWS_ENDPOINT_URL is '{endpoint}': give the S3 endpoint as a URL such as "
                             "http://localhost:9000 or https://s3.example.org.")
        config["vfs.s3.endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        config["vfs.s3.scheme"] = parsed.scheme
        config["vfs.s3.use_virtual_addressing"] = "false"  # MinIO and most on-prem stores want path style
        config.setdefault("vfs.s3.region", "us-east-1")  # the SDK needs one to sign; such stores ignore it
    if env.get("AWS_NO_SIGN_REQUEST", "").strip().lower() in _TRUE:
        config["vfs.s3.no_sign_request"] = "true"
    return config


def soma_context(uri: str | os.PathLike) -> Any:
    """A ``tiledbsoma.SOMATileDBContext`` for reading ``uri``, or ``None`` (the default) for local paths.

    Contexts are cached per configuration, so repeated opens share one TileDB context.
    """
    config = tiledb_config(uri)
    if not is_object_store(uri):
        return None
    return _context(tuple(sorted(config.items())))


@functools.lru_cache(maxsize=8)
def _context(items: tuple[tuple[str, str], ...]) -> Any:
    import tiledbsoma as soma

    return soma.SOMATileDBContext(tiledb_config=dict(items))


def open_error(uri: str, err: BaseException, what: str = "opened as a TileDB-SOMA experiment") -> InputError:
    """A one-sentence :class:`InputError` for ``uri`` that could not be ``what``, saying what to check."""
    detail, code, name = _describe(err)
    if not is_object_store(uri):
        return InputError(f"'{uri}' could not be {what} ({detail}): check the path or URI.")
    if scheme(uri) == "s3":
        text = str(err).lower()
        if code in ("401", "403") or name in _S3_CREDENTIAL_ERRORS or "credential" in text:
            check = ("the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or your AWS "
                     "profile) and that they may read this bucket")
        elif name == "NoSuchBucket" or "bucket" in text and "not exist" in text:
            check = "the bucket name (and AWS_REGION)"
        elif code in ("-1", "0") or "curl" in text or "timeout" in text:
            check = "the network connection and AWS_ENDPOINT_URL"
        else:
            check = ("that the key exists and holds a SOMA experiment (the URI of the experiment itself), the "
                     "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or your AWS profile) and AWS_REGION")
        return InputError(f"'{uri}' could not be {what}{_s3_where()} ({detail}): check {check}.")
    check = ("the URI, GOOGLE_CLOUD_PROJECT and your Google credentials" if scheme(uri) in ("gcs", "gs")
             else "the URI, AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY")
    return InputError(f"'{uri}' could not be {what} ({detail}): check {check}.")


_S3_CREDENTIAL_ERRORS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                         "InvalidToken", "TokenRefreshRequired", "Forbidden"}


def _describe(err: BaseException) -> tuple[str, str | None, str | None]:
    """``(short detail, HTTP status, S3 error name)`` of a TileDB error (status/name ``None`` if absent)."""
    text = str(err)
    code = re.search(r"\[HTTP Response Code: (-?\d+)\]", text)
    name = re.search(r"\[Exception: (\w+)\]", text)
    code, name = (code.group(1) if code else None), (name.group(1) if name else None)
    if name or code not in (None, "-1"):
        detail = ", ".join(x for x in (name, f"HTTP {code}" if code not in (None, "-1") else None) if x)
        return detail, code, name
    curl = re.search(r"curlCode: (\d+), ([^;\]\n]+)", text)
    if curl:
        return f"curl error {curl.group(1)}: {curl.group(2).strip()}", code, name
    if "not a valid TileDB array or group" in text:
        return "nothing there, or not a TileDB object", code, name
    lines = text.strip().splitlines()
    first = lines[0].removeprefix("SOMAError: ").strip() if lines else ""
    if len(first) > 1 and first[0] == first[-1] and first[0] in "'\"":
        first = first[1:-1]
    first = re.sub(r"\s*\[(Remote IP|Request ID|Headers):.*", "", first)
    if len(first) > 200:
        first = first[:197] + "..."
    return first or type(err).__name__, code, name


def _s3_where() -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f" from the S3 endpoint {endpoint}" if endpoint else ""
