"""Access control: with a token configured, every request carries it, as
``Authorization: Bearer TOKEN`` (API clients) or HTTP basic auth with TOKEN as the password and
any user name (a browser's own login prompt). Without one the hub only binds to localhost."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any, Awaitable, Callable, Dict, Optional

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
REALM = 'Basic realm="birdd hub", charset="UTF-8"'


def presented_token(header: Optional[str]) -> Optional[str]:
    """The token in an ``Authorization`` header value (Bearer, or Basic's password)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def authorised(header: Optional[str], token: str) -> bool:
    given = presented_token(header)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class TokenAuth:
    """ASGI middleware: 401 with a basic-auth challenge unless the request has the token."""

    def __init__(
        self, app: ASGIApp, token: str, exempt: Callable[[Scope], bool] = lambda scope: False
    ) -> None:
        """``exempt(scope)``: a request that authenticates otherwise (a station's clip
        upload, with the station's own token)."""
        self.app, self.token, self.exempt = app, token, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"").decode("latin-1") or None
        if authorised(header, self.token) or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        body = b'{"error": "this hub needs its token: Authorization: Bearer TOKEN"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", REALM.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def check_listen(host: str, token: Optional[str], listen: str) -> None:
    """ValueError in one line when a non-loopback address has no token to guard it."""
    if host.strip("[]") not in LOOPBACK and not token:
        raise ValueError(
            f"--listen {listen}: off localhost the hub needs an access token; set "
            "BIRDD_HUB_TOKEN (or web.token_file, or the systemd credential hub-token)"
        )
