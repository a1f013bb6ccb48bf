"""Real servers for the tests, started from Debian's packages on 127.0.0.1 in a temporary folder:
PostgreSQL (a warehouse source, and Airflow's metadata database where SQLite will not do) and Redis
(the Celery broker). ``.ci/run`` installs the packages; a test whose server is missing fails, it is
never skipped into green.

Each server runs in its own process group and is stopped with its folder when the context ends.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s: {log.read_text()[-2000:]}")


class _Server:
    """A server process in its own folder; a context manager that stops it and removes the folder."""

    name = "server"

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"profiles-{self.name}-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, args: list[str], user: str | None = None) -> None:
        log = self.folder / f"{self.name}.log"
        if user and os.geteuid() == 0:
            # Some servers (PostgreSQL) refuse to run as root: run as the package's own user.
            shutil.chown(self.folder, user)
            args = ["runuser", "-u", user, "--", *args]
        self.process = subprocess.Popen(args, stdout=log.open("a"), stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=self.folder)
        _wait_for_port(self.port, self.process, log, self.name)

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


def _postgres_bin(program: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {program} is not installed: apt-get install postgresql (.ci/run does)")
    return found[-1]


class PostgresServer(_Server):
    """A throwaway PostgreSQL cluster: trust authentication, on 127.0.0.1 only, one database."""

    name = "postgres"
    user = "postgres"

    def __init__(self, database: str = "profiles") -> None:
        super().__init__()
        self.database = database

    def start(self) -> PostgresServer:
        data = self.folder / "data"
        as_user = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        if as_user:
            shutil.chown(self.folder, self.user)
        subprocess.run([*as_user, _postgres_bin("initdb"), "-D", str(data), "-U", self.user, "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=self.folder)
        self._spawn([_postgres_bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
                     "-k", str(self.folder), "-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"], user=self.user)
        self.psql(f"CREATE DATABASE {self.database}", database="postgres")
        return self

    def psql(self, sql: str, database: str | None = None) -> str:
        """Runs SQL through psql (no Python driver needed) and returns its unaligned output."""
        result = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d",
                                 database or self.database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                                check=True, capture_output=True, text=True)
        return result.stdout

    def uri(self, scheme: str = "postgresql") -> str:
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def airflow_connection(self) -> dict:
        """An Airflow connection (the JSON form of AIRFLOW_CONN_<ID>) to this database."""
        return {"conn_type": "postgres", "host": "127.0.0.1", "port": self.port, "login": self.user,
                "schema": self.database}


class RedisServer(_Server):
    """A Redis with no persistence, on 127.0.0.1 only."""

    name = "redis"

    def start(self) -> RedisServer:
        program = shutil.which("redis-server")
        if not program:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does)")
        user = "redis" if _user_exists("redis") else None
        self._spawn([program, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                     "--dir", str(self.folder)], user=user)
        return self

    def uri(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
