"""Where the pseudonymisation key comes from on a laptop.

The key is the only secret that links originals to pseudonyms: whoever holds it can recompute every
mapping, so it lives outside the data and is never printed. In the cloud it comes from Secrets
Manager (read at the edge, not here).
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .pseudonym import MIN_KEY_BYTES

KEY_ENV = "DEIDFLOW_KEY"


@dataclass(frozen=True)
class LoadedKey:
    key: bytes
    source: str  # "file:<path>", "env:DEIDFLOW_KEY" or "created:<path>"; never the key itself


def default_key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "deidflow" / "key"


def parse_key(text: str) -> bytes:
    """Accept a key written as base64 (what `create_key_file` writes) or hex; reject short keys."""
    text = text.strip()
    raw: bytes | None = None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raw = None
    if raw is None:
        raise ValueError("key is neither base64 nor hex")
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(f"key is {len(raw)} bytes; at least {MIN_KEY_BYTES} are needed")
    return raw


def create_key_file(path: Path) -> bytes:
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    return key


def load_key(key_file: str | os.PathLike[str] | None = None) -> LoadedKey:
    """--key-file first, then $DEIDFLOW_KEY, then the default key file (created on first use)."""
    if key_file is not None:
        path = Path(key_file)
        return LoadedKey(parse_key(path.read_text()), f"file:{path}")
    if os.environ.get(KEY_ENV):
        return LoadedKey(parse_key(os.environ[KEY_ENV]), f"env:{KEY_ENV}")
    path = default_key_path()
    if path.exists():
        return LoadedKey(parse_key(path.read_text()), f"file:{path}")
    return LoadedKey(create_key_file(path), f"created:{path}")
