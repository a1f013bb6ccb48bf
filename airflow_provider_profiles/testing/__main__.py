"""Serve one or all emulators until interrupted: ``python -m airflow_provider_profiles.testing VENDOR``.

Prints one ``<vendor> <url>`` line per emulator once it listens (scripts wait for these lines).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from airflow_provider_profiles.testing import EMULATORS, create, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_profiles.testing", description=__doc__)
    parser.add_argument("vendor", choices=[*EMULATORS, "all"], help="which emulator to serve ('all': every vendor)")
    parser.add_argument("--port", type=int, default=0, help="port for a single vendor (default: a free one)")
    parser.add_argument("--config", default="{}", help="JSON object of emulator settings, e.g. '{\"time_scale\": 60}'")
    args = parser.parse_args(argv)
    vendors = list(EMULATORS) if args.vendor == "all" else [args.vendor]
    if args.port and len(vendors) > 1:
        parser.error("--port needs a single vendor")
    config = json.loads(args.config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before announcing: a caller may stop us at once
    servers = [serve(create(vendor, **config), port=args.port) for vendor in vendors]
    for vendor, server in zip(vendors, servers):
        print(f"{vendor} {server.url}", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    for server in servers:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
