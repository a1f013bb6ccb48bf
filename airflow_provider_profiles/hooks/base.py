"""Shared HTTP core of every vendor hook: connection, session, retry policy, rate limits, errors, secrets.

Sync calls (operators, sensors in poke mode) go through ``requests``; async calls (triggers) through
``aiohttp.ClientSession``. Both use the same retry policy, rate limiter and error classification, and a
request declared once (``Call``) runs on either, so a vendor hook describes endpoints and payloads only.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import contextvars
import dataclasses
import enum
import functools
import ipaddress
import json
import os
import random
import socket
import ssl
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Generator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import certifi
import requests
import tenacity
import urllib3
import yarl
from aiohttp.abc import AbstractResolver
from airflow.providers.common.compat.sdk import AirflowNotFoundException, mask_secret, redact
from airflow.providers.common.compat.sdk import BaseHook
from requests.adapters import HTTPAdapter
from requests.utils import requote_uri
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from airflow_provider_profiles import __version__
from airflow_provider_profiles.vendors import connection_form

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_SERVER_STATUSES = frozenset({500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_SAME_HOST_REDIRECTS = 5
USER_AGENT = f"airflow-provider-profiles/{__version__}"
# the Test button's budget per request and per call, seconds; credentials shorter than
# MIN_SCRUBBED_LENGTH are not searched for in its message (they would match ordinary words)
TEST_SECONDS = 20.0
MIN_SCRUBBED_LENGTH = 4


# --- errors -------------------------------------------------------------------------------------
class VendorAPIError(Exception):
    """A vendor API call that failed: HTTP status (None for transport errors), vendor message, request."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        path: str = "",
        payload: Any = None,
        retryable: bool = False,
        retry_after: float | None = None,
        vendor: str = "",
    ):
        self.status, self.method, self.path, self.payload = status, method, path, payload
        self.vendor_message = redact(message)
        self.retryable, self.retry_after = retryable, retry_after
        self.vendor, self.attempts = vendor, 1
        where = f"{method} {path}".strip()
        code = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{vendor or 'vendor'} API {where} -> {code}: {self.vendor_message}")


class VendorAuthError(VendorAPIError):
    """401/403: credentials missing, wrong or not allowed for this resource."""


class VendorNotFoundError(VendorAPIError):
    """404: the resource does not exist."""


class VendorRateLimitError(VendorAPIError):
    """429 that did not clear within the retry policy's attempts."""


class VendorValidationError(VendorAPIError):
    """400/409/413/422: the request was refused as invalid; sending it again will not help."""


class VendorServerError(VendorAPIError):
    """5xx from the vendor."""


class VendorConnectionError(VendorAPIError):
    """No (complete) response: refused, reset, dropped, timed out or past the request's deadline."""


class VendorResponseError(VendorAPIError):
    """A 2xx response that cannot be used: its body is not the JSON the route answers (an HTML page
    from a proxy, a truncated body). Transient for pollers: the next poll may get a proper answer."""


class VendorRedirectError(VendorAPIError):
    """A 3xx that was not followed: API calls follow only a GET/HEAD redirect within the same host, so
    credentials never reach another host and a POST is never replayed as a GET."""


class UntrustedURLError(VendorAPIError):
    """A URL supplied by a vendor response (an upload form, an error log) that the hook will not use:
    not http(s), or plain http / a non-public address on a host that is neither the connection's own
    nor in its ``trusted_hosts`` extra."""


class ConnectionConfigError(ValueError):
    """The Airflow connection cannot be used as set (unreadable extras, a malformed base URL). Nothing was
    sent; fix the connection. The message names the connection and the field, never a secret value."""


_ERROR_BY_STATUS: dict[int, type[VendorAPIError]] = {
    400: VendorValidationError, 401: VendorAuthError, 403: VendorAuthError, 404: VendorNotFoundError,
    409: VendorValidationError, 413: VendorValidationError, 422: VendorValidationError, 429: VendorRateLimitError,
}


def error_class_for(status: int) -> type[VendorAPIError]:
    if status >= 500:
        return VendorServerError
    return _ERROR_BY_STATUS.get(status, VendorAPIError)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


# --- retry policy ---------------------------------------------------------------------------------
@dataclasses.dataclass
class RetryPolicy:
    """When and how long to retry. One instance drives both the sync and the async client.

    Retried: 429 (any method, waiting Retry-After, capped), 500/502/503/504 and lost responses for
    idempotent requests only, and connection failures before the request was sent (any method).
    Never retried: other 4xx. ``sleep``/``asleep`` are injectable so tests can record the waits.
    """

    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5
    retry_after_cap: float = 120.0
    sleep: Callable[[float], None] = dataclasses.field(default=time.sleep, repr=False)
    asleep: Callable[[float], Any] = dataclasses.field(default=asyncio.sleep, repr=False)
    clock: Callable[[], float] = dataclasses.field(default=time.time, repr=False)  # for capacity deadlines

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> RetryPolicy:
        """Policy settings from connection extras (``max_attempts``, ``backoff_max``, ``retry_after_cap``...)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("sleep", "asleep", "clock")]
        return cls(**{n: (int if n == "max_attempts" else float)(extras[n]) for n in names if n in extras})

    def wait_seconds(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception()
        if getattr(error, "retry_after", None) is not None:
            return min(error.retry_after, self.retry_after_cap)
        backoff = self.backoff_initial * 2 ** (retry_state.attempt_number - 1)
        return min(self.backoff_max, backoff + random.uniform(0, self.jitter))

    def _kwargs(self, log: Any, deadline: Callable[[], float] | None) -> dict[str, Any]:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception()
            log.warning("%s; attempt %d of %d, retrying in %.1fs", error, state.attempt_number, self.max_attempts,
                        state.next_action.sleep)

        def past_deadline(state: tenacity.RetryCallState) -> bool:
            # the wait is decided before the stop: give up when it would end past the call's deadline
            # (counting the waits planned so far, so an injected sleep is held to it too)
            now = max(time.monotonic(), state.start_time + state.idle_for)
            return deadline is not None and now + state.upcoming_sleep >= deadline()

        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts) | past_deadline,
            "wait": self.wait_seconds,
            "retry": tenacity.retry_if_exception(lambda e: getattr(e, "retryable", False)),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def call(self, attempt: Callable[[], Any], log: Any, deadline: Callable[[], float] | None = None) -> Any:
        """Run ``attempt`` under the policy; ``deadline()`` (monotonic) stops retries whose wait would pass it."""
        retrying = tenacity.Retrying(sleep=self.sleep, **self._kwargs(log, deadline))
        try:
            return retrying(attempt)
        except VendorAPIError as error:
            error.attempts = retrying.statistics.get("attempt_number", 1)
            raise

    async def acall(self, attempt: Callable[[], Any], log: Any, deadline: Callable[[], float] | None = None) -> Any:
        retrying = tenacity.AsyncRetrying(sleep=self.asleep, **self._kwargs(log, deadline))
        try:
            return await retrying(attempt)
        except VendorAPIError as error:
            error.attempts = retrying.statistics.get("attempt_number", 1)
            raise

    def wait_for_capacity(self, call: Callable[[], Any], log: Any, capacity: CapacityWait | None) -> Any:
        """Run ``call`` (a request under this policy); while the vendor still answers 429 after it, wait
        for capacity as ``capacity`` says, then raise the 429 naming what was waited for."""
        if capacity is None:
            return call()
        growth, attempts = 1.0, 0
        while True:
            held = capacity.pause.until - self.clock()
            if held > 0:
                self.sleep(held)
            try:
                return call()
            except VendorRateLimitError as busy:
                attempts += busy.attempts
                now, until = self.clock(), capacity.until
                if until is None or now >= until:
                    raise capacity.gave_up(busy, attempts, "none came by the deadline") from None
                if busy.retry_after is not None and now + busy.retry_after > until:
                    raise capacity.gave_up(busy, attempts, f"Retry-After {busy.retry_after:g}s ends past the "
                                                           "deadline") from None
                pause = min(capacity.pause_after(busy.retry_after, growth), until - now)
                capacity.pause.until = max(capacity.pause.until, now + pause)  # a lost race only shortens it
                log.info("%s: no %s yet; trying again in %.1fs (waiting until %s at most)", busy.vendor or "vendor",
                         capacity.what, pause, _utc(until))
                growth *= capacity.backoff


@dataclasses.dataclass
class SharedPause:
    """The time before which callers sharing it send nothing (the threads of a pool, after a 429)."""

    until: float = 0.0


@dataclasses.dataclass(frozen=True)
class CapacityWait:
    """Waiting for room at the vendor once the retry policy gave up on its 429s (a free import slot,
    the next hour's uploads): try again after the answer's Retry-After (at least ``min_interval``), or
    ``interval`` seconds when it has none, both times ``backoff`` after each refusal, until ``until``
    (epoch seconds; None: no waiting); then raise the 429 naming ``what``. A Retry-After that ends past
    ``until`` gives up at once. Callers that share a ``pause`` (a thread pool) wait together: a refusal
    one of them meets holds the others off too."""

    what: str
    until: float | None
    interval: float = 15.0
    min_interval: float | None = None  # default: interval
    backoff: float = 1.0
    pause: SharedPause = dataclasses.field(default_factory=SharedPause)

    def pause_after(self, retry_after: float | None, growth: float) -> float:
        if retry_after is None:
            return self.interval * growth
        return max(retry_after, (self.interval if self.min_interval is None else self.min_interval) * growth)

    def gave_up(self, busy: VendorRateLimitError, attempts: int, why: str) -> VendorRateLimitError:
        waited = "no wait was allowed" if self.until is None else f"waited until {_utc(self.until)}: {why}"
        error = VendorRateLimitError(
            f"{busy.vendor_message}; still no {self.what} ({waited})", status=busy.status,
            method=busy.method, path=busy.path, payload=busy.payload, retry_after=busy.retry_after, vendor=busy.vendor)
        error.attempts = attempts
        return error


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --- client-side rate limit -----------------------------------------------------------------------
class RateLimiter:
    """At most ``requests`` sends in any window of ``per_seconds``: the shape of the vendors' own limits.

    Thread-safe and usable from async code: a caller reserves the earliest allowed send time under the
    lock and waits outside it, so waiting threads and coroutines go in arrival order. (A token bucket
    that starts full would allow twice the limit in the first window, which the vendor would refuse.)
    """

    def __init__(self, requests: int, per_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.requests, self.per_seconds = int(requests), float(per_seconds)
        self._clock = clock
        self._sends: collections.deque[float] = collections.deque(maxlen=self.requests)
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Book the next send and return how long to wait before making it."""
        with self._lock:
            now = self._clock()
            at = max(now, self._sends[0] + self.per_seconds) if len(self._sends) == self.requests else now
            self._sends.append(at)
            return at - now

    def free_in(self) -> float:
        """How long the next send would wait, without booking it."""
        with self._lock:
            if len(self._sends) < self.requests:
                return 0.0
            return max(0.0, self._sends[0] + self.per_seconds - self._clock())

    def acquire(self) -> float:
        wait = self.reserve()
        if wait:
            time.sleep(wait)
        return wait

    async def aacquire(self) -> float:
        wait = self.reserve()
        if wait:
            await asyncio.sleep(wait)
        return wait


_limiters: dict[tuple[str, str, str], RateLimiter] = {}
_limiters_lock = threading.Lock()


def shared_limiter(conn_type: str, conn_id: str, route: str, requests: int, per_seconds: float) -> RateLimiter:
    """The process-wide limiter of one connection and route class, so all its hooks share the limit."""
    key = (conn_type, conn_id, route)
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None or (limiter.requests, limiter.per_seconds) != (int(requests), float(per_seconds)):
            limiter = _limiters[key] = RateLimiter(requests, per_seconds)
        return limiter


# --- remote jobs ----------------------------------------------------------------------------------
class JobState(str, enum.Enum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """A vendor job's status, mapped to one of three states; ``payload`` is the vendor's own body."""

    state: JobState
    vendor_status: str
    payload: dict = dataclasses.field(default_factory=dict)
    message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state is not JobState.RUNNING


class JobNotCancellable(Exception):
    """The vendor offers no cancel for this job, or not in its current status."""


class Call:
    """One API request declared once: ``hook.call(it)`` sends it with requests, ``await hook.acall(it)``
    with aiohttp. ``parse`` makes the result of the response (default: the hook's ``parse_response``);
    ``options`` go to ``request``; a ``supplied_url`` came in a vendor's answer (``fetch_supplied_url``).
    A result that takes several requests is a plan: a generator that yields Calls, gets each one's
    result (or its ``VendorAPIError`` raised at the yield) and returns the outcome."""

    def __init__(self, method: str, path: str, parse: Callable[[Any], Any] | None = None, *,
                 supplied_url: bool = False, **options: Any):
        self.method, self.path, self.parse = method, path, parse
        self.supplied_url, self.options = supplied_url, options


# --- the hook -------------------------------------------------------------------------------------
class _Body:
    """Remembers where streamed request bodies start, so a retry resends them whole."""

    def __init__(self, kwargs: dict[str, Any]):
        streams = [kwargs.get("data")]
        files = kwargs.get("files") or {}
        for value in (files.values() if isinstance(files, Mapping) else [v for _, v in files]):
            streams.append(value[1] if isinstance(value, tuple) else value)
        streams = [s for s in streams if s is not None and not isinstance(s, (str, bytes, dict, list, tuple))]
        self._starts = [(s, s.tell()) for s in streams if hasattr(s, "seek") and hasattr(s, "tell")]
        self.rewindable = len(self._starts) == len(streams)

    def rewind(self) -> None:
        for stream, start in self._starts:
            stream.seek(start)


@dataclasses.dataclass
class _Send:
    """One request as both clients send it."""

    method: str
    url: str
    path: str  # what errors and logs show
    idempotent: bool
    authenticate: bool
    body: _Body
    headers: dict[str, str]
    timeout: tuple[float, float]
    stream: bool
    max_body_bytes: int | None
    kwargs: dict[str, Any]
    refreshed: bool = False  # credentials were renewed once for this request


@dataclasses.dataclass
class _Call:
    deadline: float  # time.monotonic(); moved on by the time spent waiting for the client-side limiter


# the call in progress in this thread / task: requests made inside it share its budget
_active_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("profiles_active_call", default=None)


class ProfilesHook(BaseHook):
    """Base of the vendor hooks. See the module docstring; subclasses set the class attributes below."""

    conn_name_attr = "conn_id"
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]
    default_base_urls: ClassVar[dict[str, str]] = {}  # region -> base URL, path prefix included
    region_extra: ClassVar[str] = "region"
    default_region: ClassVar[str] = ""
    secret_extras: ClassVar[tuple[str, ...]] = ()
    rate_limits: ClassVar[dict[str, tuple[int, float]]] = {}  # route class -> (requests, per seconds)
    connect_timeout: ClassVar[float] = 10.0
    read_timeout: ClassVar[float] = 120.0
    # one exchange, from sending to the last byte of the answer (extra ``request_deadline``): a server
    # dripping a byte at a time never trips the read timeout
    request_deadline: ClassVar[float] = 600.0
    # one call with all its retries, waits and nested token fetches (extra ``call_deadline``)
    call_deadline: ClassVar[float] = 900.0
    # The async client is shared by every hook (trigger) of a connection in an event loop.
    # ``async_pool_size`` (extra): requests in flight at once, each on a connection of its own; the rest
    # wait their turn in a semaphore, so a burst of polls queues here rather than opening connections.
    # ``keepalive_expiry`` (extra): how long an idle connection is kept, below the shortest idle timeout
    # servers use (uvicorn's and Node's 5 s), so we drop a connection before the server does rather than
    # send on one it is closing.
    async_pool_size: ClassVar[int] = 8
    keepalive_expiry: ClassVar[float] = 4.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        form = connection_form(getattr(cls, "conn_type", ""))
        if form and "get_ui_field_behaviour" not in cls.__dict__:
            # Airflow < 3.2 reads the form from the hook, not from the provider info.
            behaviour = form["ui-field-behaviour"]
            cls.get_ui_field_behaviour = classmethod(lambda _cls: {
                "hidden_fields": list(behaviour.get("hidden-fields", [])),
                "relabeling": dict(behaviour.get("relabeling", {})),
                "placeholders": dict(behaviour.get("placeholders", {})),
            })

    def __init__(self, conn_id: str | None = None, *, retry_policy: RetryPolicy | None = None, pool_size: int = 10):
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self.pool_size = pool_size
        self._retry_policy = retry_policy
        self._conn: Any = None
        self._session: requests.Session | None = None
        self._aclient: aiohttp.ClientSession | None = None
        self._aclient_lease: _ClientLease | None = None
        self.extras: dict[str, Any] = {}
        self.base_url = ""

    # connection -------------------------------------------------------------------------------
    @property
    def connection(self) -> Any:
        if self._conn is None:
            self._configure(self.get_connection(self.conn_id))
        return self._conn

    async def aconnection(self) -> Any:
        """The connection, looked up without blocking the event loop (for triggers)."""
        if self._conn is None:
            lookup = getattr(BaseHook, "aget_connection", None)
            if lookup is None:  # Airflow < 3.1
                from asgiref.sync import sync_to_async

                lookup = sync_to_async(self.get_connection)
            self._configure(await lookup(self.conn_id))
        return self._conn

    def _configure(self, conn: Any) -> None:
        extras = _read_extras(conn, self.conn_id)
        for secret in (conn.password, *(extras.get(name) for name in self.secret_extras)):
            if secret:
                mask_secret(secret)
        self.extras = extras
        self.base_url = self._resolve_base_url(conn, extras)
        self.policy = self._retry_policy or RetryPolicy.from_extras(extras)
        self.timeout = (float(extras.get("connect_timeout", self.connect_timeout)),
                        float(extras.get("read_timeout", self.read_timeout)))
        self.request_deadline = float(extras.get("request_deadline", type(self).request_deadline))
        self.call_deadline = float(extras.get("call_deadline", type(self).call_deadline))
        self._conn = conn

    def _resolve_base_url(self, conn: Any, extras: Mapping[str, Any]) -> str:
        if extras.get("base_url"):
            return self._checked_base_url(str(extras["base_url"]).rstrip("/"), "the extra base_url")
        region = extras.get(self.region_extra) or self.default_region
        if region not in self.default_base_urls:
            raise ConnectionConfigError(f"connection {self.conn_id!r}: unknown {self.region_extra} {region!r}; "
                                        f"choose from {', '.join(self.default_base_urls)} or set a host")
        default = urlsplit(self.default_base_urls[region])
        if not conn.host:
            return self.default_base_urls[region].rstrip("/")
        host = conn.host if "://" in conn.host else f"{extras.get('scheme', 'https')}://{conn.host}"
        parts = urlsplit(host)
        try:
            netloc = parts.netloc if (parts.port or not conn.port) else f"{parts.netloc}:{conn.port}"
        except ValueError:
            netloc = ""  # a port that is not a number: reported below
        url = f"{parts.scheme}://{netloc}{parts.path.rstrip('/') or default.path.rstrip('/')}"
        return self._checked_base_url(url, "the host field")

    def _checked_base_url(self, url: str, source: str) -> str:
        """A malformed base URL is a configuration error, said once (retrying cannot fix it)."""
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
            well_formed = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            well_formed = False
        if not well_formed:  # the URL itself is not quoted: it may carry user:password
            raise ConnectionConfigError(
                f"connection {self.conn_id!r}: the base URL from {source} is malformed (scheme {parts.scheme!r}); "
                "it needs http:// or https://, a host and an optional numeric port")
        return url

    def trusted_hosts(self) -> frozenset[str]:
        """Hosts besides the connection's own that server-supplied URLs may point at (extra ``trusted_hosts``)."""
        value = self.extras.get("trusted_hosts") or ()
        names = value.split(",") if isinstance(value, str) else value
        return frozenset(str(name).strip().lower() for name in names if str(name).strip())

    def limiter(self, route: str) -> RateLimiter | None:
        """The shared limiter of a route class; the connection's extra ``rate_limits`` overrides the class's."""
        limits = {**self.rate_limits, **{k: tuple(v) for k, v in (self.extras.get("rate_limits") or {}).items()}}
        if route not in limits:
            return None
        return shared_limiter(self.conn_type, self.conn_id, route, *limits[route])

    # to override ------------------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (sync)."""
        return {}

    async def aauth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (async); override when getting them needs I/O."""
        return self.auth_headers()

    def auth(self) -> tuple[str, str] | None:
        """HTTP Basic credentials, for vendors that use them."""
        return None

    def on_unauthorized(self) -> bool:
        """Called on a 401: refresh credentials and return True to retry the request once."""
        return False

    def error_message(self, payload: Any, text: str) -> str:
        """The vendor's error text from a failed response (``payload`` is its JSON, or None)."""
        if isinstance(payload, dict):
            for key in ("message", "detail", "error", "title"):
                if payload.get(key):
                    return str(payload[key])
        return text[:500] or "(empty body)"

    def parse_response(self, response: Any, call: Call) -> Any:
        """The result of a declared call whose ``parse`` is not given: the JSON body."""
        return response.json()

    # declared calls: one declaration, a sync and an async run -------------------------------------
    def call(self, plan: Call | Generator[Call, Any, Any]) -> Any:
        """Send a declared ``Call`` (or run a plan of them) with the sync client."""
        if isinstance(plan, Call):
            send = self.fetch_supplied_url if plan.supplied_url else self.request
            return self._parsed(plan, send(plan.method, plan.path, **plan.options))
        result, error = None, None
        while True:
            try:
                step = plan.send(result) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value
            try:
                result, error = self.call(step), None
            except VendorAPIError as failed:
                result, error = None, failed

    async def acall(self, plan: Call | Generator[Call, Any, Any]) -> Any:
        """The same declaration sent with the async client: never blocks the event loop."""
        if isinstance(plan, Call):
            send = self.afetch_supplied_url if plan.supplied_url else self.arequest
            return self._parsed(plan, await send(plan.method, plan.path, **plan.options))
        result, error = None, None
        while True:
            try:
                step = plan.send(result) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value
            try:
                result, error = await self.acall(step), None
            except VendorAPIError as failed:
                result, error = None, failed

    def _parsed(self, call: Call, response: Any) -> Any:
        return call.parse(response) if call.parse else self.parse_response(response, call)

    # requests -----------------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
            # pools that tell the watchdog which connection a request uses, so it can cut it at the deadline
            adapter.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            self._session = session
        return self._session

    def url(self, path: str) -> str:
        return path if "://" in path else f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        route: str = "default",
        idempotent: bool | None = None,
        authenticate: bool = True,
        wait_for_capacity: CapacityWait | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request with the retry policy and rate limit; return the response or raise ``VendorAPIError``.

        ``kwargs`` go to ``requests`` (params, json, data, files, headers, timeout, stream). Stream bodies
        (file objects) are rewound before a retry; bodies that cannot be rewound are never retried.
        ``max_body_bytes`` keeps at most that much of the answer. Credentials go to the connection's own
        host only; redirects are followed only for a GET/HEAD within that host. ``wait_for_capacity``
        keeps trying past the policy's 429s until its deadline (see ``CapacityWait``).
        """
        self.connection  # noqa: B018  (loads and masks the connection once)
        send = self._prepare(method, path, idempotent, authenticate, kwargs)
        limiter = self.limiter(route)

        def attempt() -> requests.Response:
            send.body.rewind()
            if limiter:
                self._waited_for_limiter(limiter.acquire())
            headers = {**(self.auth_headers() if send.authenticate else {}), **send.headers}
            return self._answer(send, self._send(send, headers, self._basic(send), self._send_deadline()))

        def call() -> requests.Response:  # each try for capacity has a call budget of its own
            return self._within_call(lambda deadline: self.policy.call(attempt, self.log, deadline), attempt)

        return self.policy.wait_for_capacity(call, self.log, wait_for_capacity)

    def delete_if_exists(self, path: str, **kwargs: Any) -> bool:
        """DELETE ``path``: True when deleted, False when the vendor has no such thing (404)."""
        try:
            self.request("DELETE", path, **kwargs)
        except VendorNotFoundError:
            return False
        return True

    def _send(self, send: _Send, headers: dict[str, str], basic: Any, deadline: float) -> requests.Response:
        url = send.url
        for _ in range(MAX_SAME_HOST_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._deadline_error(send)
            _WATCHDOG.watch(deadline)
            try:
                response = self.session.request(
                    send.method, url, headers=headers, auth=basic, allow_redirects=False, stream=True,
                    timeout=(min(send.timeout[0], remaining), min(send.timeout[1], remaining)), **send.kwargs)
                if not send.stream:
                    _read_body(response, deadline, send.max_body_bytes)
            except _DeadlinePassed:
                raise self._deadline_error(send) from None
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                if _WATCHDOG.fired():
                    raise self._deadline_error(send) from None
                not_sent = isinstance(exc, requests.RequestException) and _sent_nothing(exc)
                raise self._transport_error(exc, not_sent, send) from None
            finally:
                _WATCHDOG.done()
            url = self._redirect_target(response, send, url)
            if url is None:
                return response
            response.close()
        raise self._redirect_error(response, send, "too many redirects")

    # aiohttp --------------------------------------------------------------------------------------
    async def aclient(self) -> aiohttp.ClientSession:
        """The connection's async client in the running event loop, shared with every other hook of the
        same connection and settings there (a triggerer's thousand triggers: one pool, not a thousand).
        A client belongs to one loop; it is closed when its last hook closes (``aclose``)."""
        loop = asyncio.get_running_loop()
        lease = self._aclient_lease
        if lease is not None and lease.loop() is loop and not lease.client.closed:
            return lease.client
        if lease is not None:  # another loop's (or a closed) client: never used here
            self._aclient_lease, self._aclient = None, None
            if lease.release():
                lease.close_elsewhere()
        await self.aconnection()
        extras = self.extras
        slots = int(extras.get("async_pool_size", self.async_pool_size))
        keepalive = float(extras.get("keepalive_expiry", self.keepalive_expiry))
        key = (self.conn_type, self.conn_id, self.base_url, self.timeout, slots, keepalive)
        self._aclient_lease = _ClientLease.take(loop, key, slots, lambda: _new_session(
            aiohttp.TCPConnector(limit=slots, keepalive_timeout=keepalive, ssl=_ssl_context()), self.timeout))
        self._aclient = self._aclient_lease.client
        return self._aclient

    def _ain_flight(self) -> asyncio.Semaphore | contextlib.AbstractAsyncContextManager:
        """The turn to send on the shared client (see ``async_pool_size``)."""
        lease = self._aclient_lease
        return lease.shared.in_flight if lease is not None else contextlib.nullcontext()

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        route: str = "default",
        idempotent: bool | None = None,
        authenticate: bool = True,
        **kwargs: Any,
    ) -> AsyncResponse:
        """The async twin of ``request`` for triggers: same policy, limits, deadlines and errors; never blocks.
        The answer is read whole (at most ``max_body_bytes``) and has the sync answer's ``status_code``,
        ``headers``, ``content``, ``text`` and ``json()``, so a declared call parses either."""
        return await self._arequest(await self.aclient(), method, path, route=route, idempotent=idempotent,
                                    authenticate=authenticate, **kwargs)

    async def _arequest(self, client: aiohttp.ClientSession, method: str, path: str, *, route: str = "default",
                        idempotent: bool | None = None, authenticate: bool = True, **kwargs: Any) -> AsyncResponse:
        send = self._prepare(method, path, idempotent, authenticate, kwargs)
        send.body = _Body({})
        limiter = self.limiter(route)

        async def attempt() -> AsyncResponse:
            if limiter:
                self._waited_for_limiter(await limiter.aacquire())
            headers = {**(await self.aauth_headers() if send.authenticate else {}), **send.headers}
            response = await self._asend(client, send, headers, self._basic(send), self._send_deadline())
            return self._answer(send, response)

        return await self._awithin_call(lambda deadline: self.policy.acall(attempt, self.log, deadline), attempt)

    async def _asend(self, client: aiohttp.ClientSession, send: _Send, headers: dict[str, str], basic: Any,
                     deadline: float) -> AsyncResponse:
        if basic:
            headers = {**headers, "Authorization": _basic_authorization(*basic)}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=send.timeout[0], sock_read=send.timeout[1])
        url = send.url
        for _ in range(MAX_SAME_HOST_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._deadline_error(send)
            try:
                # asyncio.timeout bounds the whole exchange (a server dripping bytes never trips sock_read).
                # A kept-alive connection the server closed as we sent on it (its idle timeout raced ours)
                # gives no answer: aiohttp sends an idempotent request again at once, on a new connection,
                # and never a POST (RFC 9112, 9.3.1).
                async with asyncio.timeout(remaining), self._ain_flight(), client.request(
                        send.method, _as_sent(url), headers=headers, allow_redirects=False, timeout=timeout,
                        proxy=_env_proxy(url), **send.kwargs) as answer:
                    response = await _aread(answer, send.max_body_bytes)
            except aiohttp.ClientError as exc:  # before TimeoutError: a sock_read timeout is both
                not_sent = isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
                raise self._transport_error(exc, not_sent, send) from None
            except TimeoutError:
                raise self._deadline_error(send) from None
            url = self._redirect_target(response, send, url)
            if url is None:
                return response
        raise self._redirect_error(response, send, "too many redirects")

    # the parts both clients share -------------------------------------------------------------------
    def api_base_urls(self) -> list[str]:
        """The bases of the vendor's own APIs for this connection: the only hosts that get credentials.
        A vendor whose API spans several hosts adds the others (derived from the connection)."""
        return [self.base_url]

    def _prepare(self, method: str, path: str, idempotent: bool | None, authenticate: bool,
                 kwargs: dict[str, Any]) -> _Send:
        method = method.upper()
        url = self.url(path)
        timeout = kwargs.pop("timeout", None) or self.timeout
        if isinstance(kwargs.get("params"), Mapping):  # the same query from both clients
            kwargs["params"] = {name: ("true" if value else "false") if isinstance(value, bool) else value
                                for name, value in kwargs["params"].items() if value is not None}
        return _Send(
            method=method, url=url, path=_display_path(path),
            idempotent=method in IDEMPOTENT_METHODS if idempotent is None else idempotent,
            # credentials go to the vendor's API hosts only, whatever URL a caller passes
            authenticate=authenticate and _origin(url) in self._api_origins(),
            body=_Body(kwargs), headers=kwargs.pop("headers", None) or {},
            timeout=timeout if isinstance(timeout, tuple) else (float(timeout), float(timeout)),
            stream=bool(kwargs.pop("stream", False)), max_body_bytes=kwargs.pop("max_body_bytes", None),
            kwargs=kwargs,
        )

    def _api_origins(self) -> frozenset[tuple[str, str, int | None]]:
        # the same for every request of a connection (base URL and extras): worked out once, not per poll
        settings = (self.base_url, id(self.extras))
        cached, origins = self.__dict__.get("_api_origins_of", (None, frozenset()))
        if cached != settings:
            origins = frozenset(_origin(base) for base in self.api_base_urls())
            self.__dict__["_api_origins_of"] = (settings, origins)
        return origins

    def _send_deadline(self) -> float:
        call = _active_call.get()
        deadline = time.monotonic() + self.request_deadline
        return min(deadline, call.deadline) if call else deadline

    def _within_call(self, run: Callable[[float], Any], attempt: Callable[[], Any]) -> Any:
        """One budget per call: a request made inside another's attempt (a token fetch) is sent once, on
        the caller's deadline, and its failure is the caller's attempt failing (the caller's policy retries)."""
        if _active_call.get() is not None:
            return attempt()
        with self._call_budget() as deadline:
            return run(deadline)

    async def _awithin_call(self, run: Callable[[float], Any], attempt: Callable[[], Any]) -> Any:
        if _active_call.get() is not None:
            return await attempt()
        with self._call_budget() as deadline:
            return await run(deadline)

    @contextlib.contextmanager
    def _call_budget(self) -> Any:
        call = _Call(time.monotonic() + self.call_deadline)
        token = _active_call.set(call)
        try:
            yield lambda: call.deadline
        finally:
            _active_call.reset(token)

    @staticmethod
    def _waited_for_limiter(seconds: float) -> None:
        """A wait for our own rate limiter (a Localytics upload slot: up to an hour) is not the server
        being slow: it does not use up the call's budget."""
        call = _active_call.get()
        if call is not None and seconds:
            call.deadline += seconds

    def _basic(self, send: _Send) -> Any:
        return self.auth() if send.authenticate else None

    def _answer(self, send: _Send, response: Any) -> Any:
        """The response, or the error it is. A 401 or 403 is retried once, at once, if the hook could
        refresh its credentials."""
        if response.status_code < 400:
            return response
        reauthenticated = (response.status_code in (401, 403) and send.authenticate and not send.refreshed
                           and self.on_unauthorized())
        send.refreshed = send.refreshed or reauthenticated
        raise self._response_error(response, send, reauthenticated)

    def _redirect_target(self, response: Any, send: _Send, url: str) -> str | None:
        """None for a final answer; the next URL for a GET/HEAD redirect within the same host; else an error."""
        if response.status_code not in REDIRECT_STATUSES:
            if response.status_code < 300:
                _typed_json(response, lambda why: VendorResponseError(
                    why, status=response.status_code, method=send.method, path=send.path, vendor=self.hook_name))
            return None
        target = urljoin(url, response.headers.get("Location") or "")
        if send.method in ("GET", "HEAD") and target != url and _origin(target) == _origin(url):
            return target
        if send.method not in ("GET", "HEAD"):
            reason = f"a redirected {send.method} is not replayed; the request may not have been carried out"
        else:
            reason = "credentials are never sent to another host"
        raise self._redirect_error(response, send, reason, target)

    def _redirect_error(self, response: Any, send: _Send, reason: str, target: str = "") -> VendorRedirectError:
        parts = urlsplit(target)
        to = f" to {parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}" if target else ""
        return VendorRedirectError(f"redirect{to} not followed: {reason}", status=response.status_code,
                                   method=send.method, path=send.path, vendor=self.hook_name)

    def _deadline_error(self, send: _Send) -> VendorConnectionError:
        return VendorConnectionError(
            f"no full response within the deadline ({self.request_deadline:g}s a request, "
            f"{self.call_deadline:g}s a call)", method=send.method, path=send.path,
            retryable=send.idempotent and send.body.rewindable, vendor=self.hook_name)

    # URLs a vendor response supplies --------------------------------------------------------------------
    def fetch_supplied_url(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send to a URL a vendor response supplied (an upload form, an error log), never with credentials.

        Used only over https to a public host, or to the connection's own host or a ``trusted_hosts`` one
        (any http(s)); anything else raises ``UntrustedURLError`` before a byte is sent.
        """
        self.connection  # noqa: B018
        host = self._supplied_url_host(url)
        resolved = None
        if host is not None:
            try:
                resolved = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                pass  # see _check_public
            else:
                self._check_public(url, resolved)
        # connections to a checked host go to the addresses checked: a name that resolves otherwise
        # the second time cannot lead the request to an internal address
        token = _checked_host.set((host, resolved) if resolved else None)
        try:
            return self.request(method, url, authenticate=False, **kwargs)
        finally:
            _checked_host.reset(token)

    async def afetch_supplied_url(self, method: str, url: str, **kwargs: Any) -> AsyncResponse:
        """The async ``fetch_supplied_url``. A host checked for a public address is connected to at the
        addresses checked (a client of its own, with no DNS lookup after the check), so a name that
        resolves differently the second time cannot lead the request to an internal address."""
        await self.aconnection()
        host = self._supplied_url_host(url)
        resolved = None
        if host is not None:
            try:
                resolved = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                pass  # see _check_public
            else:
                self._check_public(url, resolved)
        if not resolved or _env_proxy(url):  # through a proxy, the proxy connects
            return await self.arequest(method, url, authenticate=False, **kwargs)
        await self.aclient()  # its turns to send (``async_pool_size``) hold for this request too
        connector = aiohttp.TCPConnector(limit=1, force_close=True, use_dns_cache=False, ssl=_ssl_context(),
                                         resolver=_CheckedAddresses(host, resolved))
        async with _new_session(connector, self.timeout) as client:
            return await self._arequest(client, method, url, authenticate=False, **kwargs)

    def _supplied_url_host(self, url: str) -> str | None:
        """None if the URL may be used as it is; the host to check is public; raises if it is refused."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise self._untrusted(url, "only http(s) URLs with a host are used")
        if host == (urlsplit(self.base_url).hostname or "").lower() or host in self.trusted_hosts():
            return None
        if parts.scheme != "https":
            raise self._untrusted(url, "plain http is used only for the connection's own host")
        return host

    def _check_public(self, url: str, resolved: list[tuple]) -> None:
        # A name this machine cannot resolve is left to the network: without a proxy the request
        # fails to connect anyway; behind one (workers without outside DNS), the proxy resolves it.
        for *_, (address, *_) in resolved:
            if not ipaddress.ip_address(address.split("%")[0]).is_global:
                raise self._untrusted(url, "its host is not a public address")

    def _untrusted(self, url: str, reason: str) -> UntrustedURLError:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return UntrustedURLError(
            f"refused the URL a response supplied ({parts.scheme}://{host}): {reason}; if the host belongs to "
            "your deployment, add it to the connection's trusted_hosts extra", path=_display_path(url),
            vendor=self.hook_name)

    async def aclose(self) -> None:
        """Let go of the shared async client; the last hook of it closes it."""
        lease, self._aclient_lease, self._aclient = self._aclient_lease, None, None
        if lease is not None and lease.release() and lease.loop() is _running_loop():
            await lease.client.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # classification ------------------------------------------------------------------------------
    def _response_error(self, response: requests.Response | AsyncResponse, send: _Send,
                        force_retry: bool = False) -> VendorAPIError:
        status, payload = response.status_code, _json(response)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if force_retry:
            retryable, retry_after = True, 0.0
        elif status == 429:
            retryable = True
        else:
            retryable = status in RETRYABLE_SERVER_STATUSES and send.idempotent
        return error_class_for(status)(
            self.error_message(payload, response.text), status=status, method=send.method, path=send.path,
            payload=payload, retryable=retryable and send.body.rewindable, retry_after=retry_after,
            vendor=self.hook_name)

    def _transport_error(self, exc: Exception, not_sent: bool, send: _Send) -> VendorConnectionError:
        # The exception text of requests/aiohttp carries the full URL; keep only its type and reason.
        what = "could not connect" if not_sent else "the connection failed before a full response"
        return VendorConnectionError(
            f"{type(exc).__name__}: {what}",
            method=send.method, path=send.path, retryable=(not_sent or send.idempotent) and send.body.rewindable,
            vendor=self.hook_name)

    # jobs: vendors with remote jobs declare the status (and cancel) calls; both clients run them ------
    def job_status_call(self, **job: Any) -> Call | Generator[Call, Any, JobStatus]:
        raise NotImplementedError(f"{type(self).__name__} has no remote jobs")

    def cancel_job_call(self, **job: Any) -> Call | Generator[Call, Any, Any]:
        raise JobNotCancellable(f"{self.hook_name} jobs cannot be cancelled")

    def job_status(self, **job: Any) -> JobStatus:
        return self.call(self.job_status_call(**job))

    async def ajob_status(self, **job: Any) -> JobStatus:
        await self.aconnection()  # a declaration may read the connection: never the blocking lookup
        return await self.acall(self.job_status_call(**job))

    def cancel_job(self, **job: Any) -> None:
        self.call(self.cancel_job_call(**job))

    async def acancel_job(self, **job: Any) -> None:
        await self.aconnection()
        await self.acall(self.cancel_job_call(**job))

    # the connection form's Test button -----------------------------------------------------------
    def probe(self) -> str:
        """The vendor's cheapest authenticated read, for ``test_connection``: says what it saw
        ("3 sections visible"). Raises the hook's errors; ``VendorResponseError`` for an answer not
        shaped like the vendor's, ``ConnectionConfigError`` for a setting the vendor refused."""
        raise NotImplementedError(f"{type(self).__name__} declares no probe")

    def probe_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """For probes: the answer's JSON; an empty 2xx body is not the vendor's answer either."""
        answer = self.request(method, path, **kwargs)
        try:
            return answer.json()
        except ValueError:  # a non-JSON body raised VendorResponseError already; this is an empty one
            raise self.unexpected_answer(method, path, "an empty body") from None

    def unexpected_answer(self, method: str, path: str, what: str) -> VendorResponseError:
        """A probe's 2xx answer that is not shaped like the vendor's (``what`` it was instead)."""
        return VendorResponseError(f"the answer is {what}", status=200, method=method.upper(),
                                   path=_display_path(path), vendor=self.hook_name)

    def test_connection(self) -> tuple[bool, str]:
        """``(ok, message)`` for Airflow's Test button and ``airflow connections test``: one probe, a
        short budget (a button should answer in seconds), and a message that says what is wrong
        (settings, host, credentials, permission, not the vendor) and never a secret."""
        saved = None
        try:
            self.connection  # noqa: B018  (settings errors are reported like any other)
            saved = (self.policy, self.timeout, self.request_deadline, self.call_deadline)
            # one immediate retry: a fresh token after a 401, or a blip; never a long wait
            self.policy = RetryPolicy(max_attempts=2, backoff_initial=0.0, backoff_max=0.0, jitter=0.0,
                                      retry_after_cap=0.0)
            self.timeout = (min(self.timeout[0], TEST_SECONDS), min(self.timeout[1], TEST_SECONDS))
            self.request_deadline = self.call_deadline = TEST_SECONDS
            ok, message = True, f"connected to {self.hook_name} at {self._shown_base_url()}: {self.probe()}"
        except Exception as error:  # the form shows the message; the task that needs the hook raises itself
            ok, message = False, self._test_failure(error)
        finally:
            if saved is not None:
                self.policy, self.timeout, self.request_deadline, self.call_deadline = saved
        return ok, self._without_secrets(message)

    def _test_failure(self, error: Exception) -> str:
        where, vendor = self._shown_base_url(), self.hook_name
        if isinstance(error, (ConnectionConfigError, ValueError)):
            return f"the connection's settings cannot be used: {error}"
        if isinstance(error, AirflowNotFoundException):  # Airflow < 3.2 also says so of unreadable extras
            return f"{error}: define it, or check that its extra field is a JSON object"
        if not isinstance(error, VendorAPIError):
            return f"{type(error).__name__}: {error}"
        said = f"HTTP {error.status} on {error.method} {error.path}: {error.vendor_message}"
        if isinstance(error, VendorAuthError) and error.status == 403:
            return (f"{vendor} refused access ({said}): the credentials are wrong, or lack the permission "
                    f"to read {error.path}")
        if isinstance(error, VendorAuthError):
            return f"{vendor} refused the credentials ({said}): check the connection's login and password"
        if isinstance(error, VendorConnectionError):
            return (f"cannot reach {where} ({error.vendor_message}): check the host, port and network, or "
                    "that the server is up")
        if isinstance(error, (VendorResponseError, VendorRedirectError, VendorNotFoundError, UntrustedURLError)):
            answer = f"HTTP {error.status}: {error.vendor_message}" if error.status else error.vendor_message
            return (f"the server at {where} does not answer like the {vendor} API ({error.method} {error.path} -> "
                    f"{answer}): check the host and the base_url extra")
        if isinstance(error, VendorRateLimitError):
            return f"{vendor} is limiting this connection's requests ({said}): try again later"
        if isinstance(error, VendorServerError):
            return f"{vendor} at {where} failed ({said}): the service may be down, try again later"
        return f"{vendor} refused the test request ({said})"

    def _shown_base_url(self) -> str:
        """The base URL as a message may show it: no user:password, no query."""
        parts = urlsplit(self.base_url)
        if not parts.hostname:
            return "(no base URL)"
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    def _without_secrets(self, text: str) -> str:
        """``text`` without the connection's credentials, even when a server echoed them back: masked
        values through Airflow's masker, and the login, password and secret extras replaced here too
        (the masker skips short values and may not run in the process that serves the Test button)."""
        text = str(redact(text))
        conn = self._conn
        if conn is not None:
            values = [conn.login, conn.password, *(self.extras.get(name) for name in self.secret_extras)]
            if conn.login and conn.password:  # HTTP Basic's header value, as a server may echo it
                values.append(base64.b64encode(f"{conn.login}:{conn.password}".encode()).decode())
            for value in sorted({str(v) for v in values if v}, key=len, reverse=True):
                if len(value) >= MIN_SCRUBBED_LENGTH:
                    text = text.replace(value, "***")
        return text


class _ClientLease:
    """A hook's hold on the async client it shares with the hooks of the same connection and settings in
    one event loop. Clients are kept per loop (weakly: a loop that is gone takes its clients with it),
    so two loops never share one: an aiohttp session's connections belong to the loop that opened them."""

    _clients: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, _SharedClient]]] = (
        weakref.WeakKeyDictionary())

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple, shared: _SharedClient):
        self.loop, self.key, self.shared, self._released = weakref.ref(loop), key, shared, False
        self.client = shared.client

    @classmethod
    def take(cls, loop: asyncio.AbstractEventLoop, key: tuple, slots: int,
             make: Callable[[], aiohttp.ClientSession]) -> _ClientLease:
        # no await between the lookup and the count: coroutines of one loop cannot interleave here
        clients = cls._clients.setdefault(loop, {})
        shared = clients.get(key)
        if shared is None or shared.client.closed:
            shared = clients[key] = _SharedClient(make(), asyncio.Semaphore(slots))
        shared.users += 1
        return cls(loop, key, shared)

    def release(self) -> bool:
        """Give the client back; True when this was its last user (the caller closes it)."""
        if self._released:
            return False
        self._released = True
        self.shared.users -= 1
        if self.shared.users > 0:
            return False
        loop = self.loop()
        clients = self._clients.get(loop) if loop is not None else None
        if clients is not None and clients.get(self.key) is self.shared:
            del clients[self.key]
        return True


    def close_elsewhere(self) -> None:
        """Close the client from outside its loop: possible only while that loop runs (in another thread)."""
        loop = self.loop()
        if loop is not None and loop.is_running() and not loop.is_closed() and not self.client.closed:
            asyncio.run_coroutine_threadsafe(self.client.close(), loop)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclasses.dataclass
class _SharedClient:
    client: aiohttp.ClientSession
    in_flight: asyncio.Semaphore  # requests sent at once: at most the pool's connections
    users: int = 0


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every async client: building one loads the CA bundle (~30 ms of blocking),
    which a triggerer running a thousand triggers cannot pay per trigger."""
    return ssl.create_default_context(cafile=certifi.where())


def _display_path(path: str) -> str:
    """What errors and logs show of a URL: its path only (no query, no host of a presigned URL)."""
    return urlsplit(path).path or "/"


def _read_extras(conn: Any, conn_id: str) -> dict[str, Any]:
    """The connection's extras; unreadable ones are an error (Airflow would log them and go on with none,
    and the hook would then call the production URL with the real key)."""
    raw = conn.extra
    if not raw:
        return {}
    try:
        parsed = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except json.JSONDecodeError as error:  # its text quotes no part of the document
        raise ConnectionConfigError(f"connection {conn_id!r}: the extra field is not valid JSON ({error.msg} at "
                                    f"line {error.lineno} column {error.colno}); nothing was sent") from None
    if not isinstance(parsed, dict):
        raise ConnectionConfigError(f"connection {conn_id!r}: the extra field must be a JSON object, "
                                    f"not a JSON {type(parsed).__name__}; nothing was sent")
    return conn.extra_dejson if isinstance(raw, (str, bytes)) else dict(parsed)  # extra_dejson masks secrets


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


class _DeadlinePassed(Exception):
    pass


class _Watchdog:
    """One daemon thread that shuts the socket of a sync request still running at its deadline.

    ``requests`` only has a per-read timeout, so a server dripping its status line or headers a byte
    at a time would hold a worker forever; the body is read by pieces against the deadline as well.
    (Async requests need none of this: ``asyncio.timeout`` cancels them.)
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._deadlines: dict[int, float] = {}  # thread -> deadline of its request in flight
        self._connections: dict[int, Any] = {}  # thread -> the connection that request uses
        self._fired: set[int] = set()
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0

    def watch(self, deadline: float) -> None:
        with self._cond:
            self._deadlines[threading.get_ident()] = deadline
            if self._thread is None or not self._thread.is_alive():  # not inherited by a forked child
                self._thread = threading.Thread(target=self._run, name="profiles-http-deadlines", daemon=True)
                self._thread.start()
            elif deadline < self._wakes_at:  # only a deadline before its next wake-up needs it awake
                self._cond.notify()

    def using(self, connection: Any) -> None:
        ident = threading.get_ident()
        with self._cond:
            if ident in self._deadlines:
                self._connections[ident] = connection

    def fired(self) -> bool:
        with self._cond:
            return threading.get_ident() in self._fired

    def done(self) -> None:
        ident = threading.get_ident()
        with self._cond:
            self._deadlines.pop(ident, None)
            self._connections.pop(ident, None)
            self._fired.discard(ident)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's thread is gone and its lock may have been held at the fork."""
        self.__init__()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for ident, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[ident]
                        self._fired.add(ident)
                        sock = getattr(self._connections.pop(ident, None), "sock", None)
                        if sock is not None:
                            try:
                                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
                            except OSError:
                                pass
                self._wakes_at = min(self._deadlines.values(), default=float("inf"))
                self._cond.wait(self._wakes_at - now if self._deadlines else None)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.reset_after_fork)


# The host of a URL a response supplied and the addresses checked for it (``fetch_supplied_url``),
# while this thread sends to it.
_checked_host: contextvars.ContextVar[tuple[str, list[tuple]] | None] = contextvars.ContextVar(
    "profiles_checked_host", default=None)


class _AtCheckedAddresses:
    """A connection to the checked host goes to its checked addresses, with no DNS lookup of its own
    (TLS still verifies the host's name). Through a proxy, the connection is to the proxy's host."""

    def _new_conn(self) -> socket.socket:
        checked = _checked_host.get()
        if checked is None or self.host.lower() != checked[0]:
            return super()._new_conn()
        error: Exception = NewConnectionError(self, f"no checked address for {self.host}")
        for *_, (address, *_) in checked[1]:
            try:
                return urllib3.util.connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except TimeoutError:
                error = ConnectTimeoutError(self, f"Connection to {self.host} ({address}) timed out. "
                                                  f"(connect timeout={self.timeout})")
            except OSError as exc:
                error = NewConnectionError(self, f"Failed to establish a new connection to {address}: {exc}")
        raise error


class _Watched:
    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _WATCHDOG.using(connection)
        return connection


class _CheckedHTTPConnection(_AtCheckedAddresses, urllib3.connection.HTTPConnection):
    pass


class _CheckedHTTPSConnection(_AtCheckedAddresses, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(_Watched, urllib3.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _WatchedHTTPSPool(_Watched, urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


def _read_body(response: requests.Response, deadline: float, limit: int | None) -> None:
    """Read the whole body (at most ``limit`` bytes) by pieces, checking the deadline after each piece."""
    chunks, size = [], 0
    try:
        while limit is None or size < limit:
            if time.monotonic() > deadline:
                raise _DeadlinePassed
            chunk = response.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except BaseException:
        response.raw.close()
        raise
    response._content = b"".join(chunks)[:limit]
    if limit is not None and size >= limit:
        response.raw.close()  # the rest is not wanted: do not return a half-read connection to the pool
    response._content_consumed = True
    response.close()


class AsyncResponse:
    """An aiohttp answer read whole, with the attributes of the sync client's that the hooks use."""

    def __init__(self, status: int, reason: str | None, headers: Mapping[str, str], content: bytes, url: str,
                 charset: str | None):
        self.status_code, self.reason, self.headers, self.content, self.url = status, reason, headers, content, url
        self.encoding = charset or "utf-8"

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding, errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")

    def json(self, **kwargs: Any) -> Any:
        return json.loads(self.content, **kwargs)


async def _aread(answer: aiohttp.ClientResponse, limit: int | None) -> AsyncResponse:
    """The whole body, or its first ``limit`` bytes; a connection left half-read is closed, not pooled."""
    if limit is None:
        content = await answer.read()
    else:
        chunks, size = [], 0
        async for chunk in answer.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                answer.close()
                break
        content = b"".join(chunks)[:limit]
    return AsyncResponse(answer.status, answer.reason, answer.headers, content, str(answer.url), answer.charset)


def _new_session(connector: aiohttp.TCPConnector, timeout: tuple[float, float]) -> aiohttp.ClientSession:
    # trust_env stays off: it costs two thread hops a request (netrc, proxy); proxies: see _env_proxy
    return aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": USER_AGENT}, raise_for_status=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout[0], sock_read=timeout[1]))


@functools.lru_cache(maxsize=256)
def _proxy_for(scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies()
    if not proxies.get(scheme) or urllib.request.proxy_bypass(host):
        return None
    return proxies[scheme]


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTP(S)_PROXY, NO_PROXY), as requests uses it."""
    parts = urlsplit(url)
    return _proxy_for(parts.scheme, parts.hostname or "")


def _basic_authorization(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


def _as_sent(url: str) -> yarl.URL:
    """The URL as the sync half (requests) sends it: aiohttp's own normalising would decode ``%2F``
    in a query, which a signed URL's signature may cover."""
    return yarl.URL(requote_uri(url), encoded=True)


class _CheckedAddresses(AbstractResolver):
    """Resolves one host to the addresses already checked, and nothing else."""

    def __init__(self, host: str, resolved: list[tuple]):
        self.host, self.resolved = host, resolved

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        if host.lower() != self.host:
            raise OSError(f"no checked address for {host}")
        return [{"hostname": host, "host": address[0], "port": port, "family": fam, "proto": proto,
                 "flags": socket.AI_NUMERICHOST} for fam, _, proto, _, address in self.resolved
                if family in (socket.AF_UNSPEC, fam)]

    async def close(self) -> None:
        pass


def _typed_json(response: Any, error: Callable[[str], VendorAPIError]) -> None:
    """Make ``response.json()`` raise a typed error (naming the route and status) for a body that is not
    JSON. An empty body still raises the library's ``ValueError``: hooks read it as "no content"."""
    decode = response.json

    def json_or_typed_error(**kwargs: Any) -> Any:
        try:
            return decode(**kwargs)
        except ValueError:
            if not response.content.strip():
                raise
            kind = (response.headers.get("Content-Type") or "no content type").split(";")[0]
            raise error(f"the answer is not valid JSON ({kind}, {len(response.content)} bytes)") from None

    response.json = json_or_typed_error


def _json(response: requests.Response | AsyncResponse) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _sent_nothing(exc: requests.RequestException) -> bool:
    """True when the request provably never reached the server (refused, or connect timed out)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, NewConnectionError)
