"""The shapes world's component banks on disk: rendered once per world setting, loaded by every later process.

One file per caption bank, `<cache>/shapes-banks/<key[:20]>-<colour>-<shape>.pt`, holding the bank's renders
(V, n_var, 3, R, R) float32 in [0, 1] (the prior's float64 means are `2·x − 1` of them, bit for bit), the full key, the
caption and a CRC-32 of the tensor's bytes. The key is a SHA-256 of everything a render depends on: the prior's world
settings, `BANK_FORMAT`, the source of world.py (any change to the renderer or a corruption makes a new key, no
version to forget to bump) and the torch version. A file that cannot be read (`torch.load(weights_only=True)`: tensors
and plain containers only), or whose key, caption, shape, dtype or checksum does not match, is rendered again and
rewritten — never trusted. Writes go to a temporary file renamed into place, so concurrent processes never read a
half-written bank; a cache folder that cannot be written is skipped silently (the bank is still rendered).

Where: `$SCOREDIST_CACHE_DIR` if set (an empty value turns the disk cache off), else `$XDG_CACHE_HOME/scoredist`, else
`~/.cache/scoredist`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

import torch

from scoredist.guidance.exact import world

BANK_FORMAT = 1
ENV = "SCOREDIST_CACHE_DIR"


def cache_dir() -> Path | None:
    """The folder of the bank files, or None when the disk cache is off (`SCOREDIST_CACHE_DIR=""`)."""
    if ENV in os.environ:
        root = os.environ[ENV]
        return Path(root).expanduser() / "shapes-banks" if root else None
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "scoredist" / "shapes-banks"


def world_key(**settings) -> str:
    """SHA-256 (hex) of the settings (JSON-able), BANK_FORMAT, world.py's source and the torch version."""
    source = Path(world.__file__).read_bytes()
    payload = json.dumps(
        {
            "format": BANK_FORMAT,
            "settings": settings,
            "world_source": hashlib.sha256(source).hexdigest(),
            "torch": torch.__version__,
        },
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def bank_path(key: str, colour: str, shape: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"{key[:20]}-{colour}-{shape}.pt"


def _checksum(tensor: torch.Tensor) -> int:
    return zlib.crc32(tensor.contiguous().numpy().tobytes())


def load(path: Path | None, key: str, caption: tuple[str, str], shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached renders (float32, `shape`), or None if absent, unreadable or not exactly what `key` describes."""
    if path is None or not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        bank = data["bank"]
        ok = (
            data["key"] == key
            and tuple(data["caption"]) == tuple(caption)
            and isinstance(bank, torch.Tensor)
            and bank.dtype == torch.float32
            and tuple(bank.shape) == tuple(shape)
            and data["crc32"] == _checksum(bank)
        )
    except Exception:  # truncated, not a torch file, a pickle with other objects, missing keys: rebuild
        return None
    return bank if ok else None


def save(path: Path | None, key: str, caption: tuple[str, str], bank: torch.Tensor) -> None:
    """Write the renders atomically (temporary file + rename); silently skipped if the folder is not writable."""
    if path is None:
        return
    bank = bank.detach().float().contiguous().cpu()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"key": key, "caption": list(caption), "bank": bank, "crc32": _checksum(bank)}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass
