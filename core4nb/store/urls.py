"""Queue URLs: the default one, the file an embedded one names, and what of a URL may be shown (the password
and secret option values never are)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from core4nb.errors import ConfigError
from core4nb.store.paths import home

URL_ENV = "CORE4NB_URL"

#: URL options whose values are safe to show; every other option's value is shown as ``***`` (tokens,
#: key file passwords and whatever else a driver may take in the URL).
SHOWN_OPTIONS = frozenset(name.lower() for name in (
    "collection_prefix", "serverSelectionTimeoutMS", "connectTimeoutMS", "socketTimeoutMS", "tls", "ssl",
    "replicaSet", "authSource", "authMechanism", "directConnection", "retryWrites", "readPreference", "w",
    "appName"))


def _split_url(url: str) -> tuple[str, str, str, list[str]]:
    """(scheme with ``://``, user info, hosts and path, options) of a URL. The user info ends at the *last*
    ``@``: a password with a raw ``/`` or ``@`` (invalid, but typed by people) must not leak through a
    narrower pattern; over-redacting a URL that merely has an ``@`` in its options is harmless."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme: the whole text may be "user:pass@host"
        scheme, rest = "", url
    userinfo, at, hosts = rest.rpartition("@")
    head, _, query = hosts.partition("?")
    return scheme + sep, userinfo + at, head, [item for item in re.split("[&;]", query) if item]


def url_secrets(url: str) -> list[str]:
    """The password and the values of options not in :data:`SHOWN_OPTIONS`: what must never be printed."""
    _, userinfo, _, options = _split_url(url)
    found = [userinfo[:-1].partition(":")[2]] + [value for key, _, value in (o.partition("=") for o in options)
                                                 if key.lower() not in SHOWN_OPTIONS]
    return [secret for secret in found if secret]


def redact_url(url: str) -> str:
    """The URL with its password and every option value not in :data:`SHOWN_OPTIONS` replaced by ``***``:
    safe to print in errors, logs and status."""
    scheme, userinfo, head, options = _split_url(url)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***@"
    shown = [o if o.partition("=")[0].lower() in SHOWN_OPTIONS or "=" not in o else o.partition("=")[0] + "=***"
             for o in options]
    return f"{scheme}{userinfo}{head}" + ("?" + "&".join(shown) if shown else "")


def embedded_path(url: str) -> Path | None:
    """The file of an embedded (``sqlite://``) queue URL, or None for another kind of URL."""
    scheme, sep, raw = url.partition("://")
    return Path(raw).expanduser() if sep and scheme.lower() == "sqlite" and raw else None


def env_url() -> str | None:
    """The queue URL from ``CORE4NB_URL``, or None for the embedded default."""
    return os.environ.get(URL_ENV) or None


def default_url() -> str:
    """``CORE4NB_URL``, else the embedded queue file in :func:`~core4nb.store.paths.home`."""
    return env_url() or f"sqlite://{home() / 'queue.db'}"


def check_on_this_machine(url: str) -> None:
    """Raise ConfigError for an embedded queue whose file is on another machine. A worker node must not
    start an empty queue of its own: an embedded queue's file is on the notebook's machine, and a node
    that cannot see it (another machine, another mount namespace) would serve nothing."""
    path = embedded_path(url)
    # A missing file in an existing folder is a queue about to be made here (a node started before the
    # notebook); a folder that is not there either names another machine's queue.
    if path is not None and not path.parent.exists() and url != default_url():
        raise ConfigError(f"queue file {path} does not exist on this machine: an embedded queue serves the "
                          "machine that holds its file (open it there first, e.g. Core4Executor or core4nb "
                          "status); for nodes on other machines use a mongodb:// queue")
