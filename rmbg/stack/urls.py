"""Showing a server's URL or DSN without its password (what `rmbg up` prints and the stack logs)."""

from __future__ import annotations

from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "***"

# Query parameters that carry a secret: libpq and asyncpg read ``password`` from a DSN's query as well as
# from its userinfo (postgresql://app@db/rmbg?password=...), redis-py does too, and ``sslpassword`` is
# libpq's passphrase for the client key.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """``url`` with each password replaced by ``***``: the userinfo's (``user:pass@`` and ``:pass@``, a
    Redis password without a user) and ``password=`` query parameters. Anything else is kept as given,
    and a string with no password (a Kafka ``host:port`` list, say) comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: show none of it rather than a secret
        return MASK
    userinfo, at, host = parts.netloc.rpartition("@")  # the last "@": a password may hold an unquoted one
    netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}" if at and ":" in userinfo else parts.netloc
    query = "&".join(_redact_param(param) for param in parts.query.split("&")) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret: not even urlsplit's normalisation changes what is shown
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_param(param: str) -> str:
    key, eq, _ = param.partition("=")
    return f"{key}={MASK}" if eq and unquote_plus(key).strip().lower() in _SECRET_PARAMS else param
