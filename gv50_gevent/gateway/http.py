"""HTTP GET (report mode 8): the tracker puts one message, without its leading `+`, at the end of
the URL path (V4.01's example: `GET /report/ACK:GTQSS,...,004A$ HTTP/1.1`).

This is an ingest endpoint, not a web interface: it serves no pages. The answer is `200` once the
message is stored, `400` with a one-line reason for a bad message (which is archived), `403` for
a tracker that may not send, and `503` while MongoDB cannot take writes (the tracker sends again;
a message it sends twice is stored once). There is no SACK in this mode.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from pymongo.errors import PyMongoError

from ..config import Settings
from ..storage.ingest import Ingest
from .packet import handle_packet
from .trackers import Trackers

log = logging.getLogger(__name__)

# Where the message starts in the path: the device strips the `+` of `+RESP:`, `+BUFF:`, `+ACK:`.
_MESSAGE = re.compile(r"(RESP|BUFF|ACK):GT")
STORE_TIMEOUT_S = 10.0  # longer than this without MongoDB's confirmation: 503, the tracker retries

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class HttpServer:
    def __init__(self, settings: Settings, ingest: Ingest, trackers: Trackers) -> None:
        self.settings = settings
        self.ingest = ingest
        self.trackers = trackers
        self.requests = 0
        self._server: WSGIServer | None = None

    def listen(self) -> tuple[str, int]:
        s = self.settings
        assert s.HTTP_PORT is not None
        self._server = WSGIServer((s.GATEWAY_HOST, s.HTTP_PORT), self._app, spawn=Pool(s.HTTP_WORKERS),
                                  log=None, error_log=log)
        self._server.start()
        address = self._server.address[:2]
        log.info("listening for HTTP GET trackers on %s:%d", address[0], address[1])
        return address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=self.settings.SHUTDOWN_GRACE_S)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self.requests += 1
        if environ.get("REQUEST_METHOD") != "GET":
            return _answer(start_response, "405 Method Not Allowed", "trackers send reports with GET")
        path = environ.get("PATH_INFO", "")  # percent-decoded, as latin-1 text
        found = _MESSAGE.search(path)
        message = "+" + path[found.start():] if found else path
        if len(message) > self.settings.MAX_FRAME_BYTES:
            message = message[:self.settings.MAX_FRAME_BYTES]
        if not message.endswith("$"):
            message += "$"  # some firmwares leave the `$` out of the URL
        address = (environ.get("REMOTE_ADDR", "?"), int(environ.get("REMOTE_PORT") or 0))
        try:
            out = handle_packet(message.encode("latin-1"), address, "http",
                                max_frame_bytes=self.settings.MAX_FRAME_BYTES, sack_default=False,
                                presence=self.trackers, sink=self.ingest, hooks=self.trackers.commands, send=None)
        except PyMongoError:
            return _answer(start_response, "503 Service Unavailable", "the database is not available; send again")
        timeout = gevent.Timeout(STORE_TIMEOUT_S)
        timeout.start()
        try:
            for batch in [*out.batches, *out.settling]:
                batch.done.wait()
        except gevent.Timeout as exc:
            if exc is not timeout:
                raise
            return _answer(start_response, "503 Service Unavailable", "the database is not confirming writes; "
                                                                     "send again")
        finally:
            timeout.close()
        if out.refused:
            return _answer(start_response, "403 Forbidden", out.refused)
        if not found:
            return _answer(start_response, "400 Bad Request", "no @Track message at the end of the URL path")
        if out.invalid:
            return _answer(start_response, "400 Bad Request", out.invalid)
        return _answer(start_response, "200 OK", "stored")


def _answer(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = (" ".join(text.split()) + "\n").encode("utf-8", "replace")  # one line
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
