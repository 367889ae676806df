"""What the autoencoder and diffusion trainers write into a bundle: its data-dependent config keys,
the model card, and the latent scale measured on training patches."""
from __future__ import annotations

import torch

from ..errors import SynBTError
from .data import PatchSampler, TrainingCase, median_spacing

NORMALIZATION = {"kind": "fit_normalization", "function": "SynBTLib.preprocess.fit_normalization"}


def bundle_meta(cases: list[TrainingCase], config: dict, data, steps: int, losses: dict, command: str) -> dict:
    """The data-dependent part of a bundle's config.json: phases, normalization, spacing, provenance."""
    return {
        "phases": int(cases[0].image.shape[0]),
        "phase_names": list(cases[0].phase_names),
        "phase_policy": config["data"].get("phase_policy"),
        "normalization": dict(NORMALIZATION),
        "spacing": median_spacing(cases),
        "training": {
            "data": str(data),
            "cases": len(cases),
            "steps": int(steps),
            "command": command,
            "final_losses": {k: float(v) for k, v in losses.items()},
            "config": config,
        },
    }


def model_card(stage: str, data, cases: list[TrainingCase], command: str, steps: int, losses: dict, scale: float,
               extra: str = "") -> str:
    """MODEL_CARD.md text: what was trained, on what, with which command, and the final losses."""
    loss_lines = "\n".join(f"| {k} | {v:.6g} |" for k, v in losses.items())
    spacing = " x ".join(f"{v:g}" for v in median_spacing(cases))
    return (
        f"# SynBT model bundle ({stage})\n\n"
        "Latent diffusion model for synthetic breast tumors in DCE-MRI (SynBT, arXiv 2509.03267).\n\n"
        f"## Training data\n\n- folder: `{data}`\n- cases: {len(cases)} ({', '.join(c.case_id for c in cases[:10])}"
        f"{', ...' if len(cases) > 10 else ''})\n- phases: {', '.join(cases[0].phase_names)}\n"
        f"- median spacing (x, y, z): {spacing} mm\n\n"
        f"## Command\n\n```\n{command or '(Python API)'}\n```\n\n"
        f"## Training\n\n- steps: {steps}\n- latent scale: {scale:.6g}\n{extra}\n"
        f"## Final losses (last step)\n\n| term | value |\n|---|---|\n{loss_lines}\n"
    )


def measure_latent_scale(autoencoder, sampler: PatchSampler, count: int, device, step: int) -> float:
    """1 / std of the latent means of ``count`` training patches (a fixed, seeded draw)."""
    with torch.no_grad():
        batch = torch.from_numpy(sampler.sample(step, count, stream=7)).to(device)
        mu, _ = autoencoder.encode(batch)
    std = float(mu.float().std())
    if not std > 0:
        raise SynBTError("the autoencoder's latents are constant on the training patches; cannot set a latent scale")
    return 1.0 / std


def latent_scale_from_cases(autoencoder, cases, patch_size, seed: int, count: int, device) -> float:
    """Latent scale of an autoencoder checkpoint that has no bundle (measured on these cases)."""
    sampler = PatchSampler(cases, patch_size, seed, flip_x=False)
    return measure_latent_scale(autoencoder, sampler, count, device, step=0)
