"""The container's HEALTHCHECK: GET /_bridge/health on the bridge's own listener.

It reads the listener from the same config the bridge runs with (the file, then the
BRIDGE_* environment, as `bridge run` does), so it follows appservice.hostname/port. Exit 0
when the bridge answers 200 (ready); else exit 1 and print why, which `podman inspect`
shows under the container's health log. Only the standard library and the bridge's own
config loader: the runtime image has no curl.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

from bridge.config import ConfigError, load_config

TIMEOUT_SECONDS = 5


def health_url(config_path: str) -> str:
    config = load_config(config_path)
    host = config.appservice.hostname
    # A listener on every address is reached on the loopback one from inside the container.
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.appservice.port}/_bridge/health"


def main() -> int:
    config_path = os.environ.get("BRIDGE_CONFIG", "/data/config.yaml")
    try:
        url = health_url(config_path)
    except ConfigError as exc:
        print(f"unhealthy: {exc}")
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            print(f"healthy: {url} answered {response.status}")
            return 0
    except urllib.error.HTTPError as exc:  # 503 with the reasons as JSON
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = None
        print(f"unhealthy: {url} answered {exc.code}: {json.dumps(body)}")
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
