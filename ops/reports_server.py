"""`make serve`'s reports server: the run reports and report entries of the artifact store, read-only.

Only `runs/<flow run id>/<file>` and `report/<fingerprint>/<file>` of a report's kinds (html, md, png,
csv): no listings, no dot-files (`.locks/`, Redis's URL), no other entry, nothing reached through a link.
With PREFECT_SERVER_API_AUTH_STRING set, every request needs the same basic auth as Prefect's API.

    MNIST_PIPELINE_REPORTS_ROOT=artifacts python -m uvicorn --factory \\
        ops.reports_server:from_environment --host 127.0.0.1 --port 4201
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
import secrets
import stat
from typing import Optional

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.settings import settings

# A run's report folder (its flow run id) or a report entry (its fingerprint), and a file of a report.
SERVED = re.compile(r"(runs/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|report/[0-9a-f]{16})"
                    r"/[A-Za-z0-9_-]+\.(html|md|png|csv)")
# A report is self-contained (inline style, images as data URIs): it needs no script, and gets none.
HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                      "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
           "X-Content-Type-Options": "nosniff"}


class BasicAuth:
    """Refuses every request that does not carry `credentials` (user:password) as HTTP basic auth."""

    def __init__(self, app: ASGIApp, credentials: str):
        self.app, self.credentials = app, credentials.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.authorized(Headers(scope=scope).get("authorization", "")):
            refusal = PlainTextResponse("credentials required", status_code=401,
                                        headers={"WWW-Authenticate": 'Basic realm="mnist-pipeline reports"'})
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except ValueError:  # binascii.Error too
            return False
        return scheme.lower() == "basic" and secrets.compare_digest(given, self.credentials)


def read_beneath(root: str, path: str) -> bytes:
    """The regular file `path` under `root`, opened a name at a time, never through a link.

    A name swapped for a link between a check and the read is refused, not
    followed (FileNotFoundError, or an OSError such as ELOOP).
    """
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        *parts, name = path.split("/")
        for part in parts:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise FileNotFoundError(path)
        return file.read()


def create_app(root: str, credentials: Optional[str] = None) -> Starlette:
    """The reports of the store at `root` (which may not exist yet), behind basic auth when `credentials` are given."""

    async def report_file(request: Request) -> Response:
        path = request.path_params["path"]
        if not SERVED.fullmatch(path):
            raise HTTPException(status_code=404)
        try:
            content = await anyio.to_thread.run_sync(read_beneath, root, path)
        except OSError:  # missing, a link, a folder, not readable
            raise HTTPException(status_code=404) from None
        return Response(content, media_type=mimetypes.guess_type(path)[0], headers=HEADERS)

    return Starlette(routes=[Route("/{path:path}", report_file, methods=["GET", "HEAD"])],
                     middleware=[Middleware(BasicAuth, credentials=credentials)] if credentials else [])


def from_environment() -> Starlette:
    """The app as `make serve` starts it: the store of MNIST_PIPELINE_REPORTS_ROOT, Prefect's server's credentials."""
    return create_app(settings().reports_root, os.environ.get("PREFECT_SERVER_API_AUTH_STRING") or None)
