"""A small HTTP client for tessera's REST API, on the standard library only.

The server and token come from configure(), else from the environment: TESSERA_BASE_URL
(default http://127.0.0.1:8080) and TESSERA_TOKEN (an API token from `tessera tokens create`).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

DEFAULT_BASE_URL = "http://127.0.0.1:8080"


class TesseraError(Exception):
    """An error answered by the server (or a failure to reach it: status None)."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None,
                 details: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details


def _server_root(base_url: str) -> str:
    # The OpenAI SDK's base URLs (".../v1", ".../serving-endpoints") name the same server.
    url = base_url.rstrip("/")
    for suffix in ("/v1", "/serving-endpoints"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


class Client:
    def __init__(self, base_url: Optional[str] = None, token: Optional[str] = None, timeout: float = 300.0):
        self.base_url = _server_root(base_url or os.environ.get("TESSERA_BASE_URL") or DEFAULT_BASE_URL)
        self.token = token if token is not None else os.environ.get("TESSERA_TOKEN")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, params: Optional[dict] = None) -> Any:
        if not self.token:
            raise TesseraError("no API token: pass token= to configure() or set TESSERA_TOKEN "
                               "(create one with `tessera tokens create NAME`)")
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                return json.loads(res.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                error = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                raise TesseraError(f"HTTP {e.code}: {raw[:200]!r}", status=e.code) from None
            raise TesseraError(error.get("message", f"HTTP {e.code}"), status=e.code, code=error.get("code"),
                               details=error.get("details")) from None
        except urllib.error.URLError as e:
            raise TesseraError(f"cannot reach the tessera server at {self.base_url}: {e.reason}") from None


_default: Optional[Client] = None


def configure(base_url: Optional[str] = None, token: Optional[str] = None, timeout: float = 300.0) -> Client:
    """Sets the server and token that the module-level functions use."""
    global _default
    _default = Client(base_url, token, timeout)
    return _default


def default_client() -> Client:
    global _default
    if _default is None:
        _default = Client()
    return _default
