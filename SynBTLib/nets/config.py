"""Shared reading of network config dataclasses from JSON dicts (bundles, training configs)."""
from __future__ import annotations

from dataclasses import fields

from ..errors import SynBTError


def config_from_dict(cls, data: dict, what: str):
    """`cls(**data)`, refusing keys the dataclass does not have with one line naming them."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise SynBTError(f"unknown {what} config keys {unknown}")
    return cls(**data)
