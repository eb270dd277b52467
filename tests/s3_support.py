"""A real S3 API on loopback for the tests: moto's server mode, and a fault-injecting proxy in front of it.

pyarrow's S3 client is C++ (the AWS SDK), so moto's in-process mocks cannot intercept it: the tests talk
HTTP to a :class:`moto.server.ThreadedMotoServer` on 127.0.0.1, found through ``AWS_ENDPOINT_URL`` like
any S3-compatible store. :class:`FaultProxy` forwards to it and answers some requests with HTTP 503
``SlowDown`` (the throttling answer of S3) or drops the connection without an answer.

Not a test module: imported by tests/conftest.py (fixtures ``s3``) and the object-store tests, and by
benchmarks/object_store.py.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "parsit-test", "AWS_SECRET_ACCESS_KEY": "parsit-test-secret",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
               # No ~/.aws of the machine, no instance metadata lookups.
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
               "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    """A moto server on loopback; ``endpoint`` is what ``AWS_ENDPOINT_URL`` is set to."""

    server: object
    endpoint: str

    def new_bucket(self, prefix: str = "parsit") -> str:
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` (key relative to it) with its bytes."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix):].lstrip("/")] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out


def start_moto() -> S3Server:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Server(server, f"http://{host}:{port}")


@contextmanager
def aws_env(endpoint: str):
    """Credentials and endpoint in the standard AWS variables (how a user configures Parsit, too)."""
    saved = {k: os.environ.get(k) for k in (*CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class FaultPlan:
    """Which requests fail: each one, independently (seeded), is answered 503 SlowDown with probability
    ``slowdown``, loses its connection without an answer with probability ``drop``, else reaches moto."""

    slowdown: float = 0.0
    drop: float = 0.0
    seed: int = 0
    counts: dict = field(default_factory=lambda: {"requests": 0, "slowdown": 0, "dropped": 0, "forwarded": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def decide(self) -> str:
        with self.lock:
            self.counts["requests"] += 1
            x = self.rng.random()
            if x < self.slowdown:
                self.counts["slowdown"] += 1
                return "slowdown"
            if x < self.slowdown + self.drop:
                self.counts["dropped"] += 1
                return "drop"
            self.counts["forwarded"] += 1
            return "forward"


_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>parsit-proxy</RequestId></Error>")


class FaultProxy:
    """An HTTP proxy on loopback in front of ``upstream`` (host:port) that injects faults per ``plan``."""

    def __init__(self, upstream: str, plan: FaultPlan):
        self.plan = plan
        up_host, up_port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                action = proxy.plan.decide()
                if action == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if action == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(_SLOWDOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
                conn = http.client.HTTPConnection(up_host, int(up_port), timeout=60)
                try:
                    conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                                 headers={**headers, "Content-Length": str(len(body))})
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                        self.send_header(k, v)
                # HEAD: the object's size as moto said it (there is no body to count).
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
