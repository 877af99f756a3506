"""A stand-in for a Confluent-compatible schema registry: the two endpoints Herald's serde uses
(POST /subjects/{subject}/versions, GET /schemas/ids/{id}), in memory, on a free 127.0.0.1 port.
Used by tests/unit/test_serde.py and, when no real registry is given, tests/integration/test_registry.py.
"""

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

REGISTRY_CT = "application/vnd.schemaregistry.v1+json"


class FakeRegistryState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.schemas: dict[int, str] = {}  # id -> schema text
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, content type
        self.next_id = 101

    def register(self, subject: str, text: str) -> int:
        parsed = json.loads(text)
        with self.lock:
            for schema_id, existing in self.schemas.items():
                if json.loads(existing) == parsed:
                    break
            else:
                schema_id = self.next_id
                self.next_id += 7
                self.schemas[schema_id] = text
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
        return schema_id

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(prefix))


class RegistryHandler(BaseHTTPRequestHandler):
    state: FakeRegistryState  # set per server

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", REGISTRY_CT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.state.requests.append(("POST", self.path, self.headers.get("Content-Type")))
        m = re.fullmatch(r"/subjects/([^/]+)/versions", self.path)
        if not m:
            return self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            text = json.loads(body)["schema"]
            json.loads(text)
        except (ValueError, KeyError):
            return self._reply(422, {"error_code": 42201, "message": "Invalid schema"})
        self._reply(200, {"id": self.state.register(unquote(m.group(1)), text)})

    def do_GET(self) -> None:
        self.state.requests.append(("GET", self.path, None))
        m = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
        if m and int(m.group(1)) in self.state.schemas:
            return self._reply(200, {"schema": self.state.schemas[int(m.group(1))]})
        self._reply(404, {"error_code": 40403, "message": f"Schema {m.group(1) if m else '?'} not found"})


def serve_registry() -> Iterator[ThreadingHTTPServer]:
    """A running stand-in (`.url`, `.state`) until the generator is closed."""
    state = FakeRegistryState()
    handler = type("Handler", (RegistryHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    server.state = state  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)
