"""Emulator harness: a vendor fake is a Starlette app with state, served over real HTTP on 127.0.0.1.

Every emulator gets, for free:
- a fault API: the next N requests matching a method/path regex answer 429 (+ Retry-After), a 5xx,
  are delayed, or have their connection dropped; ``drop_after`` and ``status_after`` first let the
  vendor act (the handler runs, its answer is thrown away), then drop the connection or answer the
  status: the lost response after a create that retries must not repeat (a test-only control);
- request counters per ``METHOD path``;
- a clock that can run faster than real time or be advanced, so hour-long vendor limits are testable;
- ``hold_ended_jobs``: a job's status route reports an ended job still running for that many reads, so
  a task's one check before it defers never sees the end, however slow the machine (``hold_end``);
- control routes under ``/_emulator/`` (faults, counters, state, clock, reset) for out-of-process use.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CONTROL_PREFIX = "/_emulator"
FAULT_KINDS = ("status", "delay", "drop", "drop_after", "status_after")


class Clock:
    """Emulated time: real elapsed time times ``scale``, plus whatever was ``advance``d."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self._origin_real = time.monotonic()
        self._origin = time.time()
        self._offset = 0.0

    def now(self) -> float:
        return self._origin + (time.monotonic() - self._origin_real) * self.scale + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds


class SlidingWindowLimit:
    """At most ``limit`` hits per ``period`` seconds of emulated time; ``hit`` returns the wait if over."""

    def __init__(self, limit: int, period: float, clock: Clock):
        self.limit, self.period, self.clock = limit, period, clock
        self._hits: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def hit(self) -> float:
        """Record a hit and return 0, or return the seconds until a hit would be allowed."""
        with self._lock:
            now = self.clock.now()
            while self._hits and self._hits[0] <= now - self.period:
                self._hits.popleft()
            if len(self._hits) >= self.limit:
                return self._hits[0] + self.period - now
            self._hits.append(now)
            return 0.0


@dataclass
class Fault:
    """The next ``count`` requests whose ``METHOD path`` matches ``match`` get this fault."""

    kind: str  # "status" | "delay" | "drop" | "drop_after" | "status_after"
    match: str = ".*"
    count: int = 1
    status: int = 503
    retry_after: float | None = None
    delay: float = 0.0
    body: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use {', '.join(FAULT_KINDS)}")
        self._pattern = re.compile(self.match)

    def matches(self, method: str, path: str) -> bool:
        return bool(self._pattern.search(f"{method} {path}"))


class Emulator:
    """Base of every vendor emulator. Subclasses set ``name`` and implement ``routes`` and ``snapshot``."""

    name: ClassVar[str] = "emulator"

    def __init__(self, *, time_scale: float = 1.0, latency: float = 0.0, hold_ended_jobs: int = 0):
        self.clock = Clock(time_scale)
        self.latency = latency  # seconds added to every vendor request
        self.hold_ended_jobs = hold_ended_jobs  # a test control, no vendor rule: see hold_end
        self._held_reads: collections.Counter[str] = collections.Counter()
        self.lock = threading.RLock()  # vendor state is shared between the server thread and tests
        self.faults: list[Fault] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.faults_served: collections.Counter[str] = collections.Counter()
        self.url: str | None = None  # set once served

    # --- to implement -------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """JSON-able view of the vendor state, for tests and ``GET /_emulator/state``."""
        return {}

    def connection(self) -> dict[str, Any]:
        """The Airflow connection (JSON form) that points a vendor hook at this running emulator.

        Vendors with credentials or a path prefix extend it.
        """
        return {"conn_type": self.name, "extra": {"base_url": self.url}}

    def summary(self) -> dict[str, Any]:
        """A few counts a person reads after a run (what was imported); vendors extend it."""
        with self.lock:
            return {"requests": sum(self.counters.values()), "faults_served": sum(self.faults_served.values())}

    def reset(self) -> None:
        """Forget vendor state (subclasses extend); faults and counters are cleared too."""
        with self.lock:
            self.faults.clear()
            self.counters.clear()
            self.faults_served.clear()
            self._held_reads.clear()

    def hold_end(self, job_key: str) -> bool:
        """Called by a job's status route when the job has ended: True while the route must still
        report it running, for the first ``hold_ended_jobs`` such reads of ``job_key``.

        Test control, no vendor rule. An operator or sensor checks its job once before it defers, so
        with 1 the end is first reported to its trigger: a test that requires every wait to defer does
        not depend on the machine being fast enough to check before a job's duration runs out.
        """
        with self.lock:
            if self._held_reads[job_key] >= self.hold_ended_jobs:
                return False
            self._held_reads[job_key] += 1
            return True

    # --- faults -------------------------------------------------------------------------------
    def inject(self, kind: str, match: str = ".*", count: int = 1, **kwargs: Any) -> Fault:
        fault = Fault(kind=kind, match=match, count=count, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.count > 0 and fault.matches(method, path):
                    fault.count -= 1
                    self.faults_served[fault.kind] += 1
                    return fault
        return None

    # --- the app ------------------------------------------------------------------------------
    def build_app(self) -> Any:
        control = [
            Route(f"{CONTROL_PREFIX}/faults", self._control_faults, methods=["POST", "DELETE"]),
            Route(f"{CONTROL_PREFIX}/counters", self._control_counters, methods=["GET"]),
            Route(f"{CONTROL_PREFIX}/state", self._control_state, methods=["GET"]),
            Route(f"{CONTROL_PREFIX}/clock", self._control_clock, methods=["POST"]),
            Route(f"{CONTROL_PREFIX}/reset", self._control_reset, methods=["POST"]),
        ]
        return _FaultMiddleware(Starlette(routes=control + self.routes()), self)

    async def _control_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            with self.lock:
                self.faults.clear()
            return JSONResponse({"faults": 0})
        body = await request.json()
        try:
            self.inject(**body)
        except (TypeError, ValueError, re.error) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"faults": len(self.faults)}, status_code=201)

    async def _control_counters(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"requests": dict(self.counters), "faults": dict(self.faults_served)})

    async def _control_state(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(self.snapshot())

    async def _control_clock(self, request: Request) -> Response:
        body = await request.json()
        if "scale" in body:
            self.clock.scale = float(body["scale"])
        self.clock.advance(float(body.get("advance", 0)))
        return JSONResponse({"now": self.clock.now(), "scale": self.clock.scale})

    async def _control_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})


class _FaultMiddleware:
    """Outermost ASGI layer: counts vendor requests and serves injected faults before the app runs."""

    def __init__(self, app: Any, emulator: Emulator):
        self.app, self.emulator = app, emulator

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        emulator = self.emulator
        with emulator.lock:
            emulator.counters[f"{method} {path}"] += 1
        fault = emulator._take_fault(method, path)
        if emulator.latency:
            await asyncio.sleep(emulator.latency)
        if fault is None:
            return await self.app(scope, receive, send)
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay)
            return await self.app(scope, receive, send)
        if fault.kind.endswith("_after"):  # the vendor acts, its answer is lost on the way back
            await self.app(scope, receive, _discard)
        if fault.kind in ("drop", "drop_after"):
            return await _drop_connection(send)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(int(fault.retry_after)) if float(fault.retry_after).is_integer() else str(fault.retry_after)
        body = fault.body or {"error": f"injected fault {fault.status}"}
        await JSONResponse(body, status_code=fault.status, headers=headers)(scope, receive, send)


async def _discard(message) -> None:
    """An ASGI ``send`` that throws the response away."""


async def _drop_connection(send) -> None:
    """Abort the TCP connection with no response, as a crashed proxy would."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:  # not under uvicorn: a half-sent response is the closest we get
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        raise ConnectionAbortedError("injected connection drop")
    transport.abort()
    await asyncio.sleep(0)  # let uvicorn notice the disconnect before it tries to answer


class EmulatorServer:
    """Serve an emulator with uvicorn in a background thread on 127.0.0.1 (a free port by default)."""

    def __init__(self, emulator: Emulator, port: int = 0, host: str = "127.0.0.1"):
        self.emulator = emulator
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(emulator.build_app(), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> EmulatorServer:
        if self._thread.is_alive():  # serve() already started it; `with serve(...)` must not restart
            return self
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.emulator.name} emulator failed to start on {self.url}")
            time.sleep(0.01)
        self.emulator.url = self.url
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(emulator: Emulator, port: int = 0) -> EmulatorServer:
    """Start ``emulator`` on 127.0.0.1 and return the running server (``.url``, ``.stop()``)."""
    return EmulatorServer(emulator, port=port).start()


def too_many_requests(retry_after: float, body: dict | None = None) -> JSONResponse:
    """429 with a whole-second Retry-After (rounded up, at least 1) as real APIs send."""
    seconds = max(1, int(retry_after + 0.999))
    return JSONResponse(body or {"error": "Too Many Requests"}, status_code=429, headers={"Retry-After": str(seconds)})
