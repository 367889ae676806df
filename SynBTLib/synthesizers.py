"""Pick a synthesizer by name (the diffusion pipeline from a bundle, or the handcrafted baseline) and
check a request against the method and what the synthesizer declares it takes (``check_request``):
the one rule behind every front-end (synbt synthesize and export, the Slicer module, its worker).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

from .capabilities import CURVE_TYPES, DEFAULT_STEPS, Capabilities, Synthesizer
from .errors import SynBTError
from .paths import default_bundle_path

__all__ = ["METHODS", "DEFAULT_STEPS", "Capabilities", "Request", "Synthesizer", "check_request",
           "default_bundle_path", "make_synthesizer"]

METHODS = ("diffusion", "handcrafted")
NECROSIS_WORDS = {"yes": True, "no": False}


@dataclass(frozen=True)
class Request:
    """A checked request: ``method`` resolved ("auto" chosen), ``steps`` with its default for a method
    that samples in steps (None otherwise), ``necrosis`` as True / False / None (drawn by the seed)."""

    method: str
    steps: int | None = None
    kinetics: str | None = None
    necrosis: bool | None = None
    bundle: Path | None = None

    @property
    def options(self) -> dict:
        """The keyword options a synthesizer call takes for this request (only those that were given)."""
        given = {"kinetics": self.kinetics, "necrosis": self.necrosis}
        return {name: value for name, value in given.items() if value is not None}


def resolve_method(method: str, bundle=None) -> str:
    """"auto" -> diffusion when a bundle is given or the shipped one is there, else handcrafted."""
    if method == "auto":
        return "diffusion" if (bundle or (default_bundle_path() / "config.json").exists()) else "handcrafted"
    if method not in METHODS:
        raise SynBTError(f"unknown method {method!r}; choose one of {', '.join(METHODS)} (or auto)")
    return method


def check_request(method: str = "diffusion", steps: int | None = None, kinetics: str | None = None,
                  necrosis=None, bundle=None, *, synthesizer: Synthesizer | None = None,
                  source_kinetics: bool = False, prefix: str = "--") -> Request:
    """The request with its defaults filled in, or a SynBTError naming the option at fault.

    Without ``synthesizer`` only what the method decides is checked (before anything is loaded); with
    one, also what it declares in its ``capabilities`` (e.g. a bundle without curve types refuses
    ``kinetics``). ``necrosis``: True / False / "yes" / "no" / None (drawn by the seed).
    ``source_kinetics`` admits kinetics "source" (an export's: each source case's own tumor's type).
    ``prefix`` goes before option names in messages ("--" for the command line)."""
    method = resolve_method(method, bundle)
    kinetics_choices = (*CURVE_TYPES, "any", *(("source",) if source_kinetics else ()))
    if kinetics is not None and kinetics not in kinetics_choices:
        raise SynBTError(f"unknown {prefix}kinetics {kinetics!r}; choose one of {', '.join(kinetics_choices)}")
    if isinstance(necrosis, str):
        if necrosis not in NECROSIS_WORDS:
            raise SynBTError(f"necrosis must be 'yes' or 'no' (or left to the seed), got {necrosis!r}")
        necrosis = NECROSIS_WORDS[necrosis]
    elif necrosis is not None and not isinstance(necrosis, bool):
        raise SynBTError(f"necrosis must be 'yes' or 'no' (or left to the seed), got {necrosis!r}")
    if steps is not None and (not isinstance(steps, numbers.Real) or isinstance(steps, bool) or int(steps) != steps
                              or steps < 1):
        raise SynBTError(f"{prefix}steps must be a whole number, at least 1, got {steps!r}")
    if bundle is not None and method != "diffusion":
        raise SynBTError(f"{prefix}bundle does not apply to the {method} method")
    capabilities = synthesizer.capabilities if synthesizer is not None else _method_capabilities(method)
    capabilities.check(method, steps, kinetics, necrosis, prefix)
    if capabilities.steps and steps is None:
        steps = DEFAULT_STEPS
    return Request(method, None if steps is None else int(steps), kinetics, necrosis,
                   None if bundle is None else Path(bundle))


def _method_capabilities(method: str) -> Capabilities:
    """What every synthesizer of ``method`` takes, before a bundle says more (its curve types, its cores)."""
    if method == "diffusion":
        return Capabilities(steps=True, kinetics=CURVE_TYPES, necrosis=True)
    return Capabilities()


def make_synthesizer(method: str = "diffusion", bundle: str | Path | None = None, steps: int | None = None,
                     **pipeline_options):
    """(synthesizer, method, steps) for a checked request (check_request: "auto" = diffusion when a
    bundle is available; steps default to DEFAULT_STEPS for the diffusion method).
    pipeline_options (device, precision) go to SynthesisPipeline.from_bundle."""
    request = check_request(method, steps, bundle=bundle)
    if request.method == "handcrafted":
        from .handcrafted import HandcraftedSynthesizer

        return HandcraftedSynthesizer(), request.method, request.steps
    from .pipeline import SynthesisPipeline

    path = request.bundle or default_bundle_path()
    if not (path / "config.json").exists():
        raise SynBTError(f"no model bundle at {path} (config.json missing); pass --bundle DIR or --method handcrafted")
    return SynthesisPipeline.from_bundle(path, **pipeline_options), request.method, request.steps
