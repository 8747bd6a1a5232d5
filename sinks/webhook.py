"""A loopback JSON webhook receiver: what a center's endpoint sees of fundwatch.

The demo starts one so that a newcomer sees notifications arrive, and the tests
deliver to it for real (Apprise's ``json://`` plugin POSTs
``{"version", "title", "message", "type", "attachments"}``). It can be told to
refuse (answer 503) to play a channel that is down.

>>> with WebhookReceiver() as hook:
...     import urllib.request
...     req = urllib.request.Request(hook.url_for("http"), data=b'{"title": "t", "message": "m"}',
...                                  headers={"Content-Type": "application/json"})
...     urllib.request.urlopen(req).status, hook.messages()[0]["title"]
(200, 't')
>>> hook.apprise_url.startswith("json://127.0.0.1:")
True
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class WebhookReceiver:
    def __init__(self, path: str = "/fundwatch", on_message: Callable[[dict], None] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.path = path
        self.on_message = on_message
        self.refusing = False
        self.refused = 0  # requests answered 503 while refusing
        self._messages: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if receiver.refusing:
                    with receiver._lock:
                        receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    message = json.loads(raw)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                message["_path"] = self.path
                message["_received_at"] = time.time()
                with receiver._lock:
                    receiver._messages.append(message)
                self.send_response(200)
                self.end_headers()
                if receiver.on_message is not None:
                    receiver.on_message(message)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def apprise_url(self) -> str:
        return self.url_for("json")

    def url_for(self, scheme: str, path: str | None = None) -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path or self.path}"

    def messages(self) -> list[dict]:
        with self._lock:
            return list(self._messages)

    def start(self) -> "WebhookReceiver":
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True,
                                        name="webhook-receiver")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() would wait forever for a loop never run
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
