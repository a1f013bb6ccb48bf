"""A minimal emulator for testing the shared mechanics (HTTP core, polling trigger, operator mixin).

It serves only this project's tests (with ``tests/echo_hook.py``), so it is not one of the package's
emulators: tests start it themselves (``emulator("echo")`` in tests/conftest.py, the e2e cluster).

Routes (header ``X-Api-Key`` must equal ``api_key``):
- ``GET|PUT|DELETE /items/{key}``: idempotent calls that echo the request;
- ``POST /items``: a non-idempotent create;
- ``POST /jobs`` ``{"duration": s, "outcome": "done"|"failed"}`` -> ``{"id"}`` (``"duration": null``: the
  job runs until cancelled, however slow the machine running the test); ``GET /jobs/{id}``
  -> ``{"id", "status": "queued"|"running"|"done"|"failed"|"cancelled"}``; ``POST /jobs/{id}/cancel``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from airflow_provider_profiles.testing.base import Emulator


class EchoEmulator(Emulator):
    name = "echo"

    def __init__(self, *, api_key: str = "echo-key", **kwargs: Any):
        super().__init__(**kwargs)
        self.api_key = api_key
        self.items: dict[str, Any] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def routes(self) -> list[Route]:
        return [
            Route("/items", self._create_item, methods=["POST"]),
            Route("/items/{key}", self._item, methods=["GET", "PUT", "DELETE"]),
            Route("/jobs", self._create_job, methods=["POST"]),
            Route("/jobs/{job_id}", self._get_job, methods=["GET"]),
            Route("/jobs/{job_id}/cancel", self._cancel_job, methods=["POST"]),
        ]

    def connection(self) -> dict[str, Any]:
        return {"conn_type": "echo", "password": self.api_key, "extra": {"base_url": self.url}}

    def snapshot(self) -> dict[str, Any]:
        return {"items": dict(self.items), "jobs": {k: self._job_view(k) for k in self.jobs}}

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.items.clear()
            self.jobs.clear()

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("x-api-key") == self.api_key

    @staticmethod
    def _unauthorized() -> JSONResponse:
        return JSONResponse({"message": "invalid api key"}, status_code=401)

    async def _create_item(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._unauthorized()
        body = await request.json()
        if "key" not in body:
            return JSONResponse({"message": "key is required"}, status_code=400)
        with self.lock:
            self.items[str(body["key"])] = body
        return JSONResponse(body, status_code=201)

    async def _item(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._unauthorized()
        key = request.path_params["key"]
        with self.lock:
            if request.method == "PUT":
                self.items[key] = await request.json()
            elif key not in self.items:
                return JSONResponse({"message": f"item {key} not found"}, status_code=404)
            elif request.method == "DELETE":
                return JSONResponse(self.items.pop(key))
            return JSONResponse(self.items[key])

    async def _create_job(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._unauthorized()
        body = await request.json()
        job_id = str(next(self._ids))
        duration = body.get("duration", 1.0)
        with self.lock:
            self.jobs[job_id] = {
                "created": self.clock.now(),
                "duration": math.inf if duration is None else float(duration),
                "outcome": body.get("outcome", "done"),
                "cancelled": False,
            }
        return JSONResponse({"id": job_id}, status_code=201)

    def _job_view(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        elapsed = self.clock.now() - job["created"]
        if job["cancelled"]:
            status = "cancelled"
        elif elapsed >= job["duration"]:
            status = job["outcome"]
        else:
            status = "queued" if elapsed < job["duration"] / 2 else "running"
        view = {"id": job_id, "status": status}
        if status == "failed":
            view["message"] = "the job failed on the vendor side"
        return view

    async def _get_job(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._unauthorized()
        job_id = request.path_params["job_id"]
        with self.lock:
            if job_id not in self.jobs:
                return JSONResponse({"message": f"job {job_id} not found"}, status_code=404)
            return JSONResponse(self._job_view(job_id))

    async def _cancel_job(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._unauthorized()
        job_id = request.path_params["job_id"]
        with self.lock:
            if job_id not in self.jobs:
                return JSONResponse({"message": f"job {job_id} not found"}, status_code=404)
            if self._job_view(job_id)["status"] not in ("queued", "running"):
                return JSONResponse({"message": "job already finished"}, status_code=409)
            self.jobs[job_id]["cancelled"] = True
            return JSONResponse(self._job_view(job_id))
