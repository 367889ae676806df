"""`synbt calibrate`: fit a bundle's latent and image calibrations (calibration.py) on the tumors of a
labelled cohort and write a calibrated copy of the bundle, with the fit described in its card."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from .bundle import CARD_FILE, RESERVED_KEYS, load_bundle, save_bundle
from .bundle_meta import phase_policy_of
from .calibration import (
    IMAGE_CONFIG_KEY,
    SHAPE_LEVELS,
    CalibrationFit,
    fit_calibration,
    fit_image_calibration,
    tumor_samples,
)
from .capabilities import DEFAULT_STEPS
from .errors import SynBTError
from .nets.scheduler import SchedulerConfig, check_inference_steps
from .pipeline import SynthesisPipeline


def calibrate_bundle(bundle, data, out, seed: int = 0, steps: int | None = None, max_tumors: int = 24,
                     command: str | None = None, progress: Callable[[int], None] | None = None,
                     image: bool = True, moments_only: bool = False, texture: bool = True,
                     notch: float | None = None) -> tuple:
    """Fit the calibration of ``bundle``'s samples on the tumors of ``data`` and write a copy of the
    bundle that carries it to ``out`` (a new or empty folder; the input bundle is never modified).
    With ``image``, an ImageCalibration is then fitted on whole syntheses that carry the new latent
    calibration (the same tumors and seeds), with its shape and curve maps unless ``moments_only``,
    its texture map first with ``texture`` (``notch``: as for fit_image_calibration). Returns (out path, latent CalibrationFit, image
    CalibrationFit or None). Calibrations the input bundle already has are ignored: refitted, or
    with ``image=False`` the image one dropped.
    ``progress(done)`` counts tumors over both passes."""
    out = Path(out)
    for source, what in ((Path(bundle), "the input bundle"), (Path(data), "the calibration data")):
        if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
            raise SynBTError(f"--out {out} is inside {what} ({source}); write the calibrated bundle to a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynBTError(f"{out} already exists and is not empty; choose a new folder")
    if not (isinstance(max_tumors, int) and max_tumors >= 2):
        raise SynBTError(f"max_tumors must be a whole number, 2 or more, got {max_tumors!r}")
    if notch is not None and not 0.0 <= notch <= 0.5:
        raise SynBTError(f"the notch strength must lie from 0 to 0.5, got {notch}")
    base = load_bundle(bundle)
    if base.denoiser is None:
        raise SynBTError(f"bundle {bundle} has no denoiser (autoencoder-only): there is nothing to calibrate")
    scheduler_config = SchedulerConfig.from_dict(base.config.get("scheduler") or {})
    pipeline = SynthesisPipeline.from_bundle(bundle, calibration=None, image_calibration=None)
    steps = check_inference_steps(pipeline.scheduler, DEFAULT_STEPS if steps is None else steps)
    policy = phase_policy_of(base.config)
    samples = tumor_samples(data, max_tumors, policy=policy)
    try:
        first = next(samples)
    except StopIteration:
        raise SynBTError(f"no labelled tumor found in {data} (cases without a tumor label are skipped)") from None
    fit = fit_calibration(pipeline, itertools.chain([first], samples), seed=seed, steps=steps, progress=progress)
    image_fit = None
    if image:
        pipeline.calibration = fit.calibration
        offset = (lambda done: progress(fit.tumors + done)) if progress is not None else None
        image_fit = fit_image_calibration(pipeline, tumor_samples(data, max_tumors, policy=policy), seed=seed, steps=steps,
                                          progress=offset, moments_only=moments_only,
                                          texture=texture, notch=notch)
    meta = {k: v for k, v in base.config.items()
            if k not in RESERVED_KEYS and k not in ("latent_calibration_source", IMAGE_CONFIG_KEY)}
    meta.update(fit.calibration.to_config())
    if image_fit is not None:
        meta.update(image_fit.calibration.to_config())
    meta["latent_calibration_source"] = {"data": str(data), "tumors": fit.tumors, "seed": seed, "steps": steps,
                                         "guidance_scale": pipeline.guidance_scale, "eta": pipeline.eta,
                                         "base_bundle_sha256": base.sha256, "image": image_fit is not None}
    card = _without_section((base.path / CARD_FILE).read_text().rstrip("\n"), "## Latent calibration") + (
        f"\n\n## Latent calibration\n\nFitted by `{command or 'synbt calibrate'}` on {fit.tumors} tumors of "
        f"`{data}` (base bundle sha256 {base.sha256[:16]}...): per latent channel of the denoiser's space, "
        f"the spread and mean over a tumor's cells of the encoded real tumor and of the one generated into "
        f"its mask (SynBTLib/calibration.py), {steps} sampling steps.\n\n"
        "| channel | real spread | generated spread | factor | real mean | generated mean | shift |\n"
        "|---|---|---|---|---|---|---|\n" + _markdown_rows(fit) + "\n" + _kinetic_lines(fit) + _image_lines(image_fit))
    path = save_bundle(out, base.autoencoder, base.denoiser, scheduler_config, base.latent_scale, meta, card)
    return path, fit, image_fit


def _markdown_rows(fit: CalibrationFit) -> str:
    return "\n".join(f"| {r['channel']} | {r['real_spread']} | {r['generated_spread']} | {r['factor']} | "
                     f"{r['real_mean']} | {r['generated_mean']} | {r['shift']} |" for r in fit.table())


def _image_lines(fit: CalibrationFit | None) -> str:
    if fit is None:
        return ""
    kinetic = "".join(f"\nShift of {name} tumors: {', '.join(f'{v:.3f}' for v in values)}."
                      for name, values in fit.calibration.kinetic_shift.items())
    kinetic += _necrotic_line(fit) + _texture_line(fit) + _shape_lines(fit) + _curve_lines(fit)
    return ("\nThen, per DCE phase in normalized units, the same over the mask's voxels of the real tumor and of a "
            "whole synthesis with the latent calibration (the image calibration, applied after decoding):\n\n"
            "| phase | real spread | generated spread | factor | real mean | generated mean | shift |\n"
            "|---|---|---|---|---|---|---|\n" + _markdown_rows(fit) + "\n" + kinetic + ("\n" if kinetic else ""))


def _necrotic_line(fit: CalibrationFit) -> str:
    """The necrotic tumors' own factor, where one was fitted ('' otherwise)."""
    if fit.calibration.necrotic_factor is None:
        return ""
    return (f"\nFactor of the {fit.necrotic_tumors} tumors generated with their necrotic core: "
            f"{', '.join(f'{v:.3f}' for v in fit.calibration.necrotic_factor)} (the table's spreads and "
            "factor are those of the other tumors).")


def _texture_line(fit: CalibrationFit) -> str:
    """The texture map ('' where none was fitted)."""
    texture = fit.calibration.texture
    if texture is None:
        return ""
    return ("\nTexture map (applied first; per phase): latent-cell notch " + ", ".join(f"{v:.2f}" for v in texture.notch)
            + "; white detail up to the real lag-1 neighbour-difference ratio "
            + ", ".join(f"{v:.3f}" for v in texture.target)
            + ("" if texture.core_target is None else
               " (necrotic cores apart: " + ", ".join(f"{v:.3f}" for v in texture.core_target) + ")") + ".")


def _shape_lines(fit: CalibrationFit) -> str:
    """The shape maps' quantiles ('' where none was fitted)."""
    lines = ""
    for name, what in (("shape", "tumors without a necrotic core"), ("necrotic_shape", "tumors with one")):
        shape = getattr(fit.calibration, name)
        if shape is None:
            continue
        lines += (f"\n\nShape map of the {what} (standardized quantiles at levels "
                  f"{', '.join(f'{v:g}' for v in SHAPE_LEVELS)}, generated -> real):\n")
        for phase, (generated, real) in enumerate(zip(shape.generated, shape.real)):
            lines += (f"\n- phase {phase}: {' '.join(f'{v:.2f}' for v in generated)} -> "
                      f"{' '.join(f'{v:.2f}' for v in real)}")
    return lines


def _curve_lines(fit: CalibrationFit) -> str:
    """The curve maps ('' where none was fitted)."""
    curves = fit.calibration.curves
    if not curves:
        return ""
    rows = "\n".join(f"| {name} | {step + 1} | {curve.real_mean[step]:+.3f} ({curve.real_std[step]:.3f}) | "
                     f"{curve.generated_mean[step]:+.3f} ({curve.generated_std[step]:.3f}) |"
                     for name, curve in curves.items() for step in range(curve.channels - 1))
    return ("\n\nCurve maps: per step from phase k-1 to phase k, the log ratio of a tumor's mean signal, mean (sd) "
            "over the real tumors and the generated ones (after the maps above); a generated tumor of a type "
            "without a map of its own gets the map of all:\n\n| tumors | step | real | generated |\n|---|---|---|---|\n"
            + rows)


def _kinetic_lines(fit: CalibrationFit) -> str:
    if not fit.kinetic_counts:
        return ""
    counts = ", ".join(f"{name} {count}" for name, count in fit.kinetic_counts.items())
    fitted = ", ".join(fit.calibration.kinetic_shift) or "none (fewer than 2 tumors of every type)"
    return (f"\nCurve types of the calibration tumors (each generated with its own): {counts}; a shift of its own "
            f"fitted for: {fitted}.\n")


def _without_section(card: str, heading: str) -> str:
    """The card without its ``heading`` section (up to the next heading of the same level)."""
    start = card.find("\n" + heading + "\n")
    if start < 0:
        return card
    end = card.find("\n## ", start + len(heading) + 2)
    return card[:start] + (card[end:] if end >= 0 else "")


# the image calibration's optional maps, by the realism suite's stage names (bench/realism_suite.py)
IMAGE_STAGE_KEYS = {"texture": ("texture",), "shape": ("shape", "necrotic_shape"), "curves": ("curves",),
                    "coherence": ("coherence",)}


def drop_image_stages(bundle, stages, reason: str) -> list[str]:
    """Leave the image calibration's ``stages`` (texture, shape, curves, coherence) out of the bundle
    folder ``bundle``, in place: its config loses their maps, its card says which and ``reason``, its
    SHA256SUMS is rewritten. For a bundle a tool is building (tools/rebuild_bundle.py), never a user's.
    Returns the config keys removed (none for a bundle without an image calibration)."""
    import json

    from .bundle import write_checksums

    unknown = [s for s in stages if s not in IMAGE_STAGE_KEYS]
    if unknown:
        raise SynBTError(f"unknown calibration stage(s) {', '.join(unknown)}; choose from {', '.join(IMAGE_STAGE_KEYS)}")
    path = Path(bundle)
    config = json.loads((path / "config.json").read_text())
    image = config.get(IMAGE_CONFIG_KEY)
    if not isinstance(image, dict):  # (calibrate --latent-only): nothing to leave out
        return []
    removed = [key for stage in stages for key in IMAGE_STAGE_KEYS[stage] if image.pop(key, None) is not None]
    if not removed:
        return removed
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    card = (path / CARD_FILE).read_text().rstrip("\n")
    card += (f"\n\nLeft out of the image calibration after fitting: {', '.join(removed)} ({reason}); "
             "the tables above still show what was fitted.\n")
    (path / CARD_FILE).write_text(card)
    write_checksums(path)
    load_bundle(path)  # the edited config still loads, checksums verified
    return removed
