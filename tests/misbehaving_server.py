"""A raw-socket HTTP server on 127.0.0.1 that answers whatever bytes a test scripts: redirects, HTML,
slow drips. It records every request it receives, so a test can prove what was (not) sent to it."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def response(status: int, body: bytes | str = b"", headers: dict[str, str] | None = None,
             content_type: str = "application/json") -> bytes:
    body = body.encode() if isinstance(body, str) else body
    head = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class MisbehavingServer:
    """``answer(received) -> bytes | Callable[[socket], None]``: the raw reply, or a function that writes it."""

    def __init__(self, answer: Callable[[Received], bytes | Callable[[socket.socket], None]]):
        self.answer = answer
        self.received: list[Received] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                received = _read_request(conn)
                if received is None:
                    return
                self.received.append(received)
                reply = self.answer(received)
                if callable(reply):
                    reply(conn)
                else:
                    conn.sendall(reply)
            except OSError:  # the client gave up on us: that is what some tests want
                pass

    def close(self) -> None:
        self._stopped = True
        self._sock.close()


def drip(head: bytes, body: bytes, every: float, sent: list[int] | None = None) -> Callable[[socket.socket], None]:
    """Send ``head`` at once, then ``body`` one byte per ``every`` seconds; ``sent`` gets the count of
    ``body`` bytes sent before the client hung up (all of them if it never did)."""

    def write(conn: socket.socket) -> None:
        conn.sendall(head)
        count = 0
        try:
            for byte in body:
                conn.sendall(bytes([byte]))
                count += 1
                time.sleep(every)
        finally:
            if sent is not None:
                sent.append(count)

    return write


def _read_request(conn: socket.socket) -> Received | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length") or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Received(method, path, headers, body)
