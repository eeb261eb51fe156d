"""The hub: whether it can be used here (offline settings, a fast reachability probe) and its rows. Callers use
these through the module (hub.rows, hub.reachable), so tests can replace them."""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from data.items import one_line

PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def offline_env() -> str | None:
    """The setting that keeps the hub offline ("HF_HUB_OFFLINE=1"), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}=1"
    return None


def probe_target() -> tuple[str, int]:
    """Host and port a hub request would connect to first: the proxy when one is configured, else the endpoint."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    scheme = endpoint.scheme or "https"
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    proxy = next((os.environ[n] for n in names + ("ALL_PROXY", "all_proxy") if os.environ.get(n)), None)
    target = urlparse(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else endpoint
    port = target.port or (443 if (target.scheme or scheme) == "https" else 80)
    return target.hostname or "huggingface.co", port


def reachable(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """A TCP connect with a hard deadline, so a machine without network learns it in seconds, not minutes of
    datasets' retries. Runs in a thread because DNS resolution ignores socket timeouts."""
    host, port = probe_target()
    result: dict[str, object] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["err"] = exc

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return True, ""
    if "err" in result:
        return False, f"cannot connect to {host}:{port} ({one_line(result['err'], 80)})"
    return False, f"no answer from {host}:{port} within {timeout:.0f} s"


def rows(hub_id: str, config: str | None, split: str) -> list[dict]:
    """The one place datasets.load_dataset is called (tests replace this function)."""
    import datasets  # imported here: it is slow to import and only the hub and parquet paths need it

    ds = datasets.load_dataset(hub_id, config, split=split)
    return [dict(row) for row in ds]
