"""Bounded network checks before a library downloads pretrained weights.

Offline machines (and firewalled clusters) must not hang on a download: we
first check, within a few seconds, that the weights' host accepts a
connection, and only then let the library download into its own cache.
"""
from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request

__all__ = ["host_answers"]


def host_answers(url: str, timeout: float) -> str | None:
    """None when the URL's host resolves and accepts a connection within ``timeout`` s, else why not.

    Runs in a daemon thread so a hanging DNS lookup cannot block the caller.
    Skipped (None) when a proxy is configured: then urllib talks to the proxy.
    """
    if urllib.request.getproxies().get("https"):
        return None
    host = urllib.parse.urlsplit(url).hostname or ""
    port = urllib.parse.urlsplit(url).port or 443
    result: dict[str, str | None] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["error"] = None
        except OSError as e:
            result["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result.get("error", f"no answer from {host} within {timeout:g} s")
