"""Shared HTTP core of every vendor hook: connection, session, retry policy, rate limits, errors, secrets.

Sync calls (operators, sensors in poke mode) go through ``requests``; async calls (triggers) through
``httpx.AsyncClient``. Both use the same retry policy, rate limiter and error classification, so a
vendor hook describes endpoints and payloads only.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import functools
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import certifi
import httpx
import requests
import tenacity
from airflow.providers.common.compat.sdk import mask_secret, redact
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from airflow_provider_profiles import CONNECTION_FORMS, __version__

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_SERVER_STATUSES = frozenset({500, 502, 503, 504})
USER_AGENT = f"airflow-provider-profiles/{__version__}"


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
        self.attempts = 1
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
    """No (complete) response: refused, reset, dropped or timed out."""


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

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> RetryPolicy:
        """Policy settings from connection extras (``max_attempts``, ``backoff_max``, ``retry_after_cap``...)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("sleep", "asleep")]
        return cls(**{n: (int if n == "max_attempts" else float)(extras[n]) for n in names if n in extras})

    def wait_seconds(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception()
        if getattr(error, "retry_after", None) is not None:
            return min(error.retry_after, self.retry_after_cap)
        backoff = self.backoff_initial * 2 ** (retry_state.attempt_number - 1)
        return min(self.backoff_max, backoff + random.uniform(0, self.jitter))

    def _kwargs(self, log: Any) -> dict[str, Any]:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception()
            log.warning("%s; attempt %d of %d, retrying in %.1fs", error, state.attempt_number, self.max_attempts,
                        state.next_action.sleep)

        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts),
            "wait": self.wait_seconds,
            "retry": tenacity.retry_if_exception(lambda e: getattr(e, "retryable", False)),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def call(self, attempt: Callable[[], Any], log: Any) -> Any:
        retrying = tenacity.Retrying(sleep=self.sleep, **self._kwargs(log))
        try:
            return retrying(attempt)
        except VendorAPIError as error:
            error.attempts = retrying.statistics.get("attempt_number", 1)
            raise

    async def acall(self, attempt: Callable[[], Any], log: Any) -> Any:
        retrying = tenacity.AsyncRetrying(sleep=self.asleep, **self._kwargs(log))
        try:
            return await retrying(attempt)
        except VendorAPIError as error:
            error.attempts = retrying.statistics.get("attempt_number", 1)
            raise


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        form = CONNECTION_FORMS.get(getattr(cls, "conn_type", ""))
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
        self._aclient: httpx.AsyncClient | None = None
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
        extras = conn.extra_dejson
        for secret in (conn.password, *(extras.get(name) for name in self.secret_extras)):
            if secret:
                mask_secret(secret)
        self.extras = extras
        self.base_url = self._resolve_base_url(conn, extras)
        self.policy = self._retry_policy or RetryPolicy.from_extras(extras)
        self.timeout = (float(extras.get("connect_timeout", self.connect_timeout)),
                        float(extras.get("read_timeout", self.read_timeout)))
        self._conn = conn

    def _resolve_base_url(self, conn: Any, extras: Mapping[str, Any]) -> str:
        if extras.get("base_url"):
            return str(extras["base_url"]).rstrip("/")
        region = extras.get(self.region_extra) or self.default_region
        if region not in self.default_base_urls:
            raise ValueError(f"connection {self.conn_id!r}: unknown {self.region_extra} {region!r}; "
                             f"choose from {', '.join(self.default_base_urls)} or set a host")
        default = urlsplit(self.default_base_urls[region])
        if not conn.host:
            return self.default_base_urls[region].rstrip("/")
        host = conn.host if "://" in conn.host else f"{extras.get('scheme', 'https')}://{conn.host}"
        parts = urlsplit(host)
        netloc = parts.netloc if (parts.port or not conn.port) else f"{parts.netloc}:{conn.port}"
        return f"{parts.scheme}://{netloc}{parts.path.rstrip('/') or default.path.rstrip('/')}"

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

    # requests -----------------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
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
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request with the retry policy and rate limit; return the response or raise ``VendorAPIError``.

        ``kwargs`` go to ``requests`` (params, json, data, files, headers, timeout). Stream bodies (file
        objects) are rewound before a retry; bodies that cannot be rewound are never retried.
        """
        self.connection  # noqa: B018  (loads and masks the connection once)
        method = method.upper()
        url, display_path = self.url(path), _display_path(path)
        idempotent = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        body = _Body(kwargs)
        headers = kwargs.pop("headers", None) or {}
        kwargs.setdefault("timeout", self.timeout)
        limiter = self.limiter(route)
        refreshed = False

        def attempt() -> requests.Response:
            nonlocal refreshed
            body.rewind()
            if limiter:
                limiter.acquire()
            auth_headers = self.auth_headers() if authenticate else {}
            try:
                response = self.session.request(method, url, headers={**auth_headers, **headers},
                                                auth=self.auth() if authenticate else None, **kwargs)
            except requests.RequestException as exc:
                raise self._transport_error(exc, _sent_nothing(exc), method, display_path, idempotent, body) from None
            if response.status_code >= 400:
                # a 401 is retried once, at once, if the hook could refresh its credentials
                reauthenticated = response.status_code == 401 and authenticate and not refreshed and self.on_unauthorized()
                refreshed = refreshed or reauthenticated
                raise self._response_error(response, method, display_path, idempotent, body, reauthenticated)
            return response

        return self.policy.call(attempt, self.log)

    # httpx ----------------------------------------------------------------------------------------
    async def aclient(self) -> httpx.AsyncClient:
        if self._aclient is None:
            await self.aconnection()
            self._aclient = httpx.AsyncClient(
                verify=_ssl_context(),
                timeout=httpx.Timeout(self.timeout[1], connect=self.timeout[0]),
                limits=httpx.Limits(max_connections=self.pool_size),
                headers={"User-Agent": USER_AGENT},
            )
        return self._aclient

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        route: str = "default",
        idempotent: bool | None = None,
        authenticate: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """The async twin of ``request`` for triggers: same policy, limits and errors; never blocks."""
        client = await self.aclient()
        method = method.upper()
        url, display_path = self.url(path), _display_path(path)
        idempotent = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        headers = kwargs.pop("headers", None) or {}
        limiter = self.limiter(route)
        body = _Body({})
        refreshed = False

        async def attempt() -> httpx.Response:
            nonlocal refreshed
            if limiter:
                await limiter.aacquire()
            auth_headers = await self.aauth_headers() if authenticate else {}
            basic = self.auth() if authenticate else None
            try:
                response = await client.request(method, url, headers={**auth_headers, **headers},
                                                auth=basic or httpx.USE_CLIENT_DEFAULT, **kwargs)
            except httpx.HTTPError as exc:
                not_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                raise self._transport_error(exc, not_sent, method, display_path, idempotent, body) from None
            if response.status_code >= 400:
                # a 401 is retried once, at once, if the hook could refresh its credentials
                reauthenticated = response.status_code == 401 and authenticate and not refreshed and self.on_unauthorized()
                refreshed = refreshed or reauthenticated
                raise self._response_error(response, method, display_path, idempotent, body, reauthenticated)
            return response

        return await self.policy.acall(attempt, self.log)

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # classification ------------------------------------------------------------------------------
    def _response_error(self, response: requests.Response | httpx.Response, method: str, path: str,
                        idempotent: bool, body: _Body, force_retry: bool = False) -> VendorAPIError:
        status, payload = response.status_code, _json(response)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if force_retry:
            retryable, retry_after = True, 0.0
        elif status == 429:
            retryable = True
        else:
            retryable = status in RETRYABLE_SERVER_STATUSES and idempotent
        return error_class_for(status)(
            self.error_message(payload, response.text), status=status, method=method, path=path, payload=payload,
            retryable=retryable and body.rewindable, retry_after=retry_after,
            vendor=self.hook_name,
        )

    def _transport_error(self, exc: Exception, not_sent: bool, method: str, path: str, idempotent: bool,
                         body: _Body) -> VendorConnectionError:
        # The exception text of requests/httpx carries the full URL; keep only its type and reason.
        reason = type(exc).__name__
        return VendorConnectionError(
            f"{reason}: {'could not connect' if not_sent else 'the connection failed before a full response'}",
            method=method, path=path, retryable=(not_sent or idempotent) and body.rewindable, vendor=self.hook_name,
        )

    # jobs (vendors with remote jobs implement these) -------------------------------------------
    def job_status(self, **job: Any) -> JobStatus:
        raise NotImplementedError(f"{type(self).__name__} has no remote jobs")

    async def ajob_status(self, **job: Any) -> JobStatus:
        raise NotImplementedError(f"{type(self).__name__} has no remote jobs")

    def cancel_job(self, **job: Any) -> None:
        raise JobNotCancellable(f"{self.hook_name} jobs cannot be cancelled")

    async def acancel_job(self, **job: Any) -> None:
        raise JobNotCancellable(f"{self.hook_name} jobs cannot be cancelled")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every async client: building one loads the CA bundle (~30 ms of blocking),
    which a triggerer running a thousand triggers cannot pay per trigger."""
    return ssl.create_default_context(cafile=certifi.where())


def _display_path(path: str) -> str:
    """What errors and logs show of a URL: its path only (no query, no host of a presigned URL)."""
    return urlsplit(path).path or "/"


def _json(response: requests.Response | httpx.Response) -> Any:
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
