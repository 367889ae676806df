"""What a synthesizer is and what it can be asked for (no heavy imports: front-ends read this first).

A synthesizer is called as ``synth(case, mask, seed, steps=None, progress=None, **options) -> Case``
and declares in ``capabilities`` which options it takes; ``synthesizers.check_request`` holds every
front-end's requests to those declarations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import SynBTError

from .kinetics import CURVE_TYPES  # noqa: F401  (the curve types a tumor can be asked to follow)

DEFAULT_STEPS = 30  # sampling steps of a synthesizer that samples in steps, when none are asked for


@dataclass(frozen=True)
class Capabilities:
    """The options a synthesizer takes beyond (case, mask, seed, progress).

    steps: it samples in steps (``steps=N``; DEFAULT_STEPS when not given).
    kinetics: None: it takes no ``kinetics`` option; else the curve types it can be given (``"any"``,
        its own choice, is always accepted, and is all that an empty tuple accepts).
    necrosis: it takes ``necrosis=True/False/None/core mask`` (None: drawn by the seed).
    core_refusal: why ``necrosis=True`` is refused (it cannot size or make a core), None when it is not.
    """

    steps: bool = False
    kinetics: tuple[str, ...] | None = None
    necrosis: bool = False
    core_refusal: str | None = None

    def check(self, method: str, steps=None, kinetics: str | None = None, necrosis=None, prefix: str = "--") -> None:
        """Refuse, with a SynBTError naming the option, what a synthesizer of ``method`` with these
        capabilities does not take (``kinetics`` "source": any curve type it takes; ``necrosis``:
        True / False / None, or a core mask, which counts as True where it is not empty)."""
        if steps is not None and not self.steps:
            raise SynBTError(f"{prefix}steps does not apply to the {method} method")
        if kinetics is not None:
            if self.kinetics is None:
                raise SynBTError(f"{prefix}kinetics applies to the diffusion method (a bundle trained with curve "
                                 f"types), not to {method}")
            if kinetics != "any" and not self.kinetics:
                raise SynBTError(f"{prefix}kinetics {kinetics}: this bundle's denoiser takes no kinetic curve type "
                                 "(it was trained without kinetic classes)")
            if kinetics not in ("any", "source", *self.kinetics):
                raise SynBTError(f"{prefix}kinetics {kinetics}: this bundle's denoiser takes only "
                                 f"{', '.join(self.kinetics)} or any")
        if necrosis is not None and not self.necrosis:
            raise SynBTError(f"{prefix}necrosis applies to the diffusion method (a bundle trained with necrotic "
                             f"cores), not to {method}")
        if necrosis is True and self.core_refusal:
            raise SynBTError(f"{prefix}necrosis yes: {self.core_refusal}")


@runtime_checkable
class Synthesizer(Protocol):
    """The interface every synthesis method implements."""

    @property
    def capabilities(self) -> Capabilities: ...

    def __call__(self, case, mask, seed: int, steps: int | None = None, progress=None, **options): ...

    def describe(self, seed: int, kinetics: str | None = None, mask=None, spacing_zyx=None, necrosis=None) -> dict:
        """What a synthesis with these arguments records in provenance."""
        ...
