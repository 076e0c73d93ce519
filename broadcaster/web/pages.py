"""Serving the browser pages: ``/console``, ``/kiosk`` and their files under ``/static/``.

The pages are public (they hold no secret: a token is typed or provisioned in the
browser and sent by the page's scripts, never put in a URL); everything they do
goes through the authenticated API and the endpoint WebSocket. Every page and
file is sent with a Content-Security-Policy that allows scripts, styles and
workers from this service only, and network connections only to this service's
API and endpoint WebSocket; pages may not be framed.

``/web/site.json`` tells a page where the endpoint WebSocket listens (another
port than the API) and whether TLS is on, so a page never needs it in its URL.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from typing import Final

from aiohttp import web

from broadcaster.api.access import PUBLIC, requires
from broadcaster.auth import host_name
from broadcaster.config import Config
from broadcaster.streaming.server import ENDPOINT_PATH

#: Route names of pages start with this, so the OpenAPI check leaves them out.
PAGE_ROUTE_PREFIX: Final = "page:"
#: Browser page -> its HTML file under static/.
PAGES: Final = {"/console": "console.html", "/kiosk": "kiosk.html"}
_STATIC = resources.files("broadcaster.web") / "static"
_CONFIG: web.AppKey[Config] = web.AppKey("web_config", Config)
_TYPES: Final = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".wav": "audio/wav",
}


def is_page(route: web.AbstractRoute) -> bool:
    """Whether a route serves a browser page or its files (not part of the API)."""
    return (route.name or "").startswith(PAGE_ROUTE_PREFIX)


def _ws_origins(request: web.Request, config: Config) -> str:
    scheme = config.server.ws_scheme
    host = host_name(request.headers.get("Host")) or "localhost"
    name = f"[{host}]" if ":" in host else host
    return f"{scheme}://{name}:{_ws_port(request, config)}"


def _ws_port(request: web.Request, config: Config) -> int:
    port = request.app.get(WS_PORT)
    return port if port is not None else config.server.ws_port


#: The bound endpoint WebSocket port (set by the service once it listens; port 0 in tests).
WS_PORT: web.AppKey[int] = web.AppKey("web_ws_port", int)


def security_headers(request: web.Request, config: Config) -> dict[str, str]:
    csp = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "media-src 'self' blob:",
            "worker-src 'self'",
            f"connect-src 'self' {_ws_origins(request, config)}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        # The kiosk and the console need the microphone (live paging) and autoplay
        # only from this origin.
        "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    }


def _file(request: web.Request, name: str) -> web.Response:
    config = request.app[_CONFIG]
    if "/" in name or "\\" in name or name.startswith("."):
        raise web.HTTPNotFound()
    target = _STATIC / name
    if not target.is_file():
        raise web.HTTPNotFound()
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    ctype = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return web.Response(
        body=target.read_bytes(),
        content_type=ctype,
        charset="utf-8" if ctype.startswith("text/") or ctype.endswith("json") else None,
        headers=security_headers(request, config),
    )


@requires(PUBLIC)
async def _page(request: web.Request) -> web.Response:
    return _file(request, PAGES[request.path.rstrip("/")])


@requires(PUBLIC)
async def _static(request: web.Request) -> web.Response:
    return _file(request, request.match_info["name"])


@requires(PUBLIC)
async def _site(request: web.Request) -> web.Response:
    """What a page needs to find the service: the endpoint WebSocket URL, TLS, versions."""
    config = request.app[_CONFIG]
    return web.json_response(
        {
            "endpoint_url": _ws_origins(request, config) + ENDPOINT_PATH,
            "tls": config.server.tls is not None,
            "protocol": 1,
        },
        headers=security_headers(request, config),
    )


def add_pages(app: web.Application, config: Config) -> None:
    """Register the pages, their static files and ``/web/site.json`` on the API app."""
    app[_CONFIG] = config
    for path in PAGES:
        app.router.add_get(path, _page, name=f"{PAGE_ROUTE_PREFIX}{path.strip('/')}")
    app.router.add_get("/static/{name}", _static, name=f"{PAGE_ROUTE_PREFIX}static")
    app.router.add_get("/web/site.json", _site, name=f"{PAGE_ROUTE_PREFIX}site")
