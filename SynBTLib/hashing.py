"""sha256 of files and folders, read in blocks (bundles' SHA256SUMS, inputs in provenance)."""
from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK_BYTES = 1 << 20


def _update(digest, file: Path) -> None:
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
            digest.update(block)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (what sha256sum prints)."""
    digest = hashlib.sha256()
    _update(digest, Path(path))
    return digest.hexdigest()


def sha256_of(path: str | Path) -> str:
    """file_sha256 of a file; of a folder, the sha256 of every file's relative path and bytes, in sorted order."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        _update(digest, file)
    return digest.hexdigest()
