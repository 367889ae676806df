"""Pick a synthesizer by name: the diffusion pipeline from a bundle, or the handcrafted baseline.

Every synthesizer is a callable ``(case, mask, seed, steps=None, progress=None) -> Case``.
"""
from __future__ import annotations

from pathlib import Path

from .paths import default_bundle_path
from .errors import SynBTError

__all__ = ["METHODS", "DEFAULT_STEPS", "default_bundle_path", "make_synthesizer"]

METHODS = ("diffusion", "handcrafted")
DEFAULT_STEPS = 30


def make_synthesizer(method: str = "diffusion", bundle: str | Path | None = None, steps: int | None = None):
    """Return (synthesizer, method, steps). method "auto" = diffusion when a bundle is available."""
    if method == "auto":
        method = "diffusion" if (bundle or (default_bundle_path() / "config.json").exists()) else "handcrafted"
    if method == "handcrafted":
        from .handcrafted import HandcraftedSynthesizer

        return HandcraftedSynthesizer(), method, steps
    if method == "diffusion":
        from .pipeline import SynthesisPipeline

        path = Path(bundle) if bundle else default_bundle_path()
        if not (path / "config.json").exists():
            raise SynBTError(f"no model bundle at {path} (config.json missing); pass --bundle DIR or --method handcrafted")
        steps = DEFAULT_STEPS if steps is None else int(steps)
        if steps < 1:
            raise SynBTError(f"--steps must be at least 1, got {steps}")
        return SynthesisPipeline.from_bundle(path), method, steps
    raise SynBTError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def check_necrosis(synthesizer, necrosis: bool | None, method: str, option: str = "--necrosis") -> None:
    """Refuse ``necrosis`` (True / False; None = drawn by the seed) where ``synthesizer`` cannot follow it:
    a method without necrotic cores, or a bundle that cannot make one. Called before anything is written."""
    if necrosis is None:
        return
    if not hasattr(synthesizer, "takes_necrosis"):
        raise SynBTError(f"{option} applies to the diffusion method, not to {method}")
    refusal = synthesizer.core_refusal(necrosis)
    if refusal:
        raise SynBTError(f"{option} yes: {refusal}")
