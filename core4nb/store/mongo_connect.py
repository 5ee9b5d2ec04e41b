"""Talking to a MongoDB server: the queue URL's parts, and driver errors as core4nb's own."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote_plus

from pymongo import uri_parser
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from core4nb.errors import ConfigError, StoreUnavailable
from core4nb.store.mongo_claim import AUTH_ERRORS
from core4nb.store.urls import redact_url, url_secrets


def parse_url(url: str) -> tuple[str, str, str, dict[str, Any]]:
    """(driver URL without collection_prefix, database, collection prefix, driver options)."""
    head, _, query = url.partition("?")
    prefix, kept = "sys.", []
    for item in filter(None, re.split("[&;]", query)):  # the other options pass on verbatim
        key, _, value = item.partition("=")
        if key.lower() == "collection_prefix":
            prefix = unquote_plus(value)
        else:
            kept.append(item)
    driver_url = head + ("?" + "&".join(kept) if kept else "")
    try:
        parsed = uri_parser.parse_uri(driver_url)
    except (PyMongoError, ValueError) as exc:
        reason = str(exc)
        for secret in url_secrets(url):  # a driver's message may quote the URL's password or options
            reason = reason.replace(secret, "***")
        raise ConfigError(f"queue URL {redact_url(url)!r} is not a valid MongoDB URL ({reason}); "
                          "use mongodb://[user:pass@]host[:port]/DATABASE") from None
    if not parsed["database"]:
        raise ConfigError(f"queue URL {redact_url(url)!r} names no database: add one, e.g. mongodb://host:27017/core4")
    return driver_url, parsed["database"], prefix, parsed["options"]


def guarded(method):
    """Report an unreachable or refusing server as StoreUnavailable, naming the redacted URL."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ConnectionFailure as exc:  # server selection timeouts, AutoReconnect, network timeouts
            reason = str(exc).split(", Timeout:")[0].splitlines()[0][:200]
            raise StoreUnavailable(f"cannot reach MongoDB for queue {redact_url(self.url)} ({reason}); start the "
                                   "server or fix host/port in the URL (or wait longer: ?serverSelectionTimeoutMS="
                                   "30000)") from None
        except OperationFailure as exc:
            if exc.code not in AUTH_ERRORS:
                raise
            raise StoreUnavailable(f"MongoDB refused queue {redact_url(self.url)} ({exc.details.get('errmsg')}); "
                                   "check user, password and authSource in the URL") from None

    return wrapper
