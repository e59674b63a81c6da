"""The Hugging Face hub: where hub presets' weights come from, and failing fast without it.

A hub preset whose weights are not in the local Hugging Face cache needs the hub; whether it
can be reached is decided within seconds (a TCP probe of :data:`HUB_PROBE_TIMEOUT` seconds, or
at once with ``HF_HUB_OFFLINE=1``), and the error then names the ``hf download`` command,
``HF_HUB_OFFLINE`` and ``load_model(..., weights=...)``. Cached weights load in
huggingface_hub's offline mode when the hub is unreachable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import torch

from .presets import ModelInfo, WeightsNotAvailableError
from .weights import load_state_dict_file

__all__ = ["HUB_PROBE_TIMEOUT"]


def _download_beit_pt22k(hub_id: str) -> dict[str, torch.Tensor]:
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in _HUB_WEIGHT_FILES:
        try:
            path = hf_hub_download(hub_id, filename)
        except Exception as err:  # offline, not cached, or that file is not in the repo
            errors.append(f"{filename}: {type(err).__name__}: {err}")
            continue
        return load_state_dict_file(path)
    raise WeightsNotAvailableError(_offline_message(hub_id, "beit", "the download failed") + "\nDetails: " + " | ".join(errors))


# The weights files timm and transformers look for in a hub repository, safest first.
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

HUB_PROBE_TIMEOUT = 2.0
"""Seconds the reachability check of the hub may take before the hub counts as unreachable."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _hub_offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` is set, now (environment) or when huggingface_hub was imported."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_cached_file(hub_id: str, extra: str | None = None) -> str | None:
    """A weights file of ``hub_id`` in the local Hugging Face cache, or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ((extra,) if extra else ()) + _HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return found
    return None


def _hub_probe_address() -> tuple[str, int]:
    """Host and port a download would connect to first: the HTTPS proxy if one is set, else the hub."""
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(var):
            url = urlsplit(os.environ[var] if "//" in os.environ[var] else "//" + os.environ[var])
            return url.hostname or "", url.port or 80
    url = urlsplit(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _hub_reachable(timeout: float | None = None) -> tuple[bool, str]:
    """Whether a TCP connection to the hub (or the proxy) opens within ``timeout`` seconds.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread that is
    abandoned when it takes too long.

    Returns:
        ``(reachable, why_not)``.
    """
    timeout = HUB_PROBE_TIMEOUT if timeout is None else timeout
    host, port = _hub_probe_address()
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = ""
        except OSError as err:
            result["error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=probe, name="iav-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "ok" in result:
        return True, ""
    return False, f"the hub ({host}:{port}) cannot be reached ({result.get('error', f'no answer within {timeout:g} s')})"


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Runs the body with huggingface_hub's offline mode on (cache only), then restores it."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    if enabled:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_access(info: ModelInfo, preset: str, extra_file: str | None = None, num_classes: int | None = None) -> bool:
    """Decides, in seconds, how the hub weights of ``preset`` can be had.

    Returns:
        Whether to load from the cache in offline mode (cached, and the hub is unreachable or
        ``HF_HUB_OFFLINE`` is set). ``False``: download (or revalidate) normally.

    Raises:
        WeightsNotAvailableError: Not cached, and offline mode is set or the hub is unreachable.
    """
    cached = _hub_cached_file(info.hub_id, extra_file)
    if _hub_offline_requested():
        if cached is None:
            raise WeightsNotAvailableError(
                _offline_message(info.hub_id, preset, "HF_HUB_OFFLINE=1 is set, so nothing is downloaded", num_classes)
            )
        return True
    reachable, why = _hub_reachable()
    if cached is None and not reachable:
        raise WeightsNotAvailableError(_offline_message(info.hub_id, preset, why, num_classes))
    return not reachable


def _offline_message(hub_id: str, preset: str, reason: str, num_classes: int | None = None) -> str:
    heads = f"num_classes={num_classes if num_classes is not None else 10}"
    return (
        f"Pretrained weights for preset {preset!r} (hub repository {hub_id}) are not in the local "
        f"Hugging Face cache ({_hub_cache_dir()}), and {reason}. Either\n"
        f"  * on a machine with network access run\n"
        f"        hf download {hub_id}\n"
        f"    (the command-line tool of huggingface_hub; it fills the cache under HF_HOME, default "
        f"~/.cache/huggingface), copy that cache to this machine (same HF_HOME) and set HF_HUB_OFFLINE=1 "
        f"to load it without any network access; or\n"
        f"  * pass a local weights file: load_model({preset!r}, {heads}, weights='path/to/model.safetensors')."
    )


def _looks_offline(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    offline = {
        "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError",
        "URLError", "MaxRetryError", "NewConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout",
        "gaierror", "HfHubHTTPError", "ProxyError", "socket.timeout",
    }
    return bool(names & offline) or isinstance(err, OSError)


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__

