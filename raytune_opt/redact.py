"""Secrets out of everything printed or written: passwords and tokens in URIs.

A URI may carry credentials (``http://user:password@host:5000`` for MLflow, a signed S3 URL,
``?token=...``). Everything raytune-opt prints or writes goes through :func:`redact`
(``http://user:***@host:5000``); the whole URI is kept only in this process's memory, where
it is used (:func:`remember`, :func:`usable`). A URI read back from a file, whose password
was not kept, is used without its userinfo: MLflow then takes the credentials from
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, as it documents.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://USER:PASSWORD@ -> scheme://USER:***@
_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*):(?P<secret>[^/\s@'\"]+)@")
# http(s)://TOKEN@ (no password: the userinfo itself is the credential) -> http(s)://***@
_TOKEN = re.compile(r"(?P<head>\bhttps?://)(?P<secret>[^/\s:@'\"]+)@")
# ?token=... &X-Amz-Signature=... and the like in a query string
_QUERY = re.compile(r"(?P<head>[?&](?:[A-Za-z0-9_-]*(?:token|password|passwd|secret|signature|credential)"
                    r"|sig|key|api_?key|access_?key|auth)=)(?P<secret>[^&\s#'\"]+)", re.IGNORECASE)

_whole: dict[str, str] = {}  # redacted -> whole, for URIs given to this process


def redact(text: str) -> str:
    """``text`` with every credential in a URI replaced by ``***``."""
    if not isinstance(text, str) or ("@" not in text and "=" not in text):
        return text
    text = _PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@" if m["secret"] != MASK else m[0], text)
    text = _TOKEN.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_data(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings) with :func:`redact` applied to every string."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v) for v in value)
    return value


def remember(uri: str | None) -> str | None:
    """Keep ``uri`` whole in memory (not on disk) so that :func:`usable` finds it from its
    redacted form; returns ``uri``."""
    if uri:
        shown = redact(uri)
        if shown != uri:
            _whole[shown] = uri
    return uri


def usable(uri: str | None) -> str | None:
    """The URI to connect with: the whole one if this process was given it, else ``uri``
    without a redacted userinfo (credentials then come from the environment)."""
    if not uri or MASK not in uri:
        return uri
    if uri in _whole:
        return _whole[uri]
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)


def lost_credentials(uri: str | None) -> bool:
    """Whether ``uri`` was redacted and this process does not know its whole form."""
    return bool(uri) and MASK in uri and uri not in _whole
