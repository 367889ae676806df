"""What the web server may read and write, and who may connect: nothing outside --data / the study
folder, and only a client that gives the token the server printed."""
from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path

from ..errors import SynBTError

LOOPBACK = "127.0.0.1"


def resolve_inside(root: str | Path, relative: str) -> Path:
    """root/relative, refused unless it stays inside root (no absolute path, no '..', no symlink out)."""
    root = Path(root).resolve()
    text = str(relative or "").strip()
    if not text or Path(text).is_absolute() or "\x00" in text:
        raise SynBTError(f"'{relative}' is not a path inside the served folder")
    path = (root / text).resolve()
    if path != root and root not in path.parents:
        raise SynBTError(f"'{relative}' is outside the served folder; only files under {root} can be used")
    return path


def relative_name(root: str | Path, path: Path) -> str:
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def list_cases(root: str | Path, depth: int = 2) -> list[str]:
    """Case folders (the engine's layouts: phase_K files or <case>_000K files) under root, as relative paths."""
    from ..datasets import find_phase_files

    root = Path(root).resolve()
    found, level = [], [root]
    for _ in range(depth + 1):
        below = []
        for folder in level:
            try:
                if find_phase_files(folder):
                    found.append(relative_name(root, folder) if folder != root else ".")
                    continue
            except (SynBTError, OSError):
                continue
            below += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                            and (p.resolve() == root or root in p.resolve().parents))
        level = below
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, token: str | None) -> str:
    """The token clients must give (?secret=...): the given --token, else a new random one, on loopback
    too: any web page the user opens could otherwise reach a local websocket (browsers do not apply
    the same-origin rule to websockets) and drive the page."""
    if token is not None and len(token) < 16:
        raise SynBTError("--token must be at least 16 characters")
    return token or secrets.token_urlsafe(24)
