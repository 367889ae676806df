"""Train the patch-to-volume autoencoder on random patches; write an autoencoder-only bundle.

Loss: L1 reconstruction + kl_weight * KL (summed over latent elements, while L1 is a voxel mean)
+ consistency_weight * patch/volume consistency (nets.autoencoder.consistency_loss) + optional
kinetic_weight * L1 of the differences between consecutive phases (the subtraction images) +
optional patch adversarial term (MONAI PatchDiscriminator, off by default). At the end the latent
scale (1 / std of the latent means of training patches) is measured and stored in the bundle.

Fine-tuning (config ``"finetune": {"bundle": PATH, "part": "all" | "decoder"}``) starts from a
bundle's autoencoder. With ``part: "decoder"`` the encoder is frozen and the decoder learns to
decode the latent means (no posterior sampling, no KL or consistency term), so the latent space,
and any denoiser trained on it, stays valid; the bundle keeps the source's latent scale and
``bundle.replace_decoder`` puts the new decoder under a diffusion bundle.
``loss.decoder_latent_noise`` (decoder fine-tune only) adds Gaussian noise of that standard
deviation (latent units) to the means it decodes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..bundle import save_bundle
from ..errors import SynBTError
from ..nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder, consistency_loss, kl_loss
from .common import (
    Distributed,
    TrainSettings,
    Trainer,
    finetune_bundle,
    prepare_run_dir,
    seed_everything,
    setup_distributed,
    step_torch_generator,
    teardown_distributed,
)
from .data import PatchSampler, TrainingCase, data_phase_policy, load_cases, median_spacing

DEFAULT_CONFIG = {
    "autoencoder": {},  # AutoencoderConfig defaults, with in_channels set from the data
    "training": {"steps": 2000, "batch_size": 2, "lr": 1e-4, "seed": 0, "checkpoint_every": 200, "warmup_steps": 100},
    "data": {"patch_size": [32, 32, 32], "flip_x": True, "body_fraction": 0.9, "tumor_fraction": 0.0},
    "loss": {
        "kl_weight": 1e-6,
        "consistency_weight": 0.1,
        "kinetic_weight": 0.0,
        "adversarial_weight": 0.0,
        "decoder_latent_noise": 0.0,
        "discriminator_channels": 16,
        "discriminator_layers": 2,
    },
    "latent_scale_patches": 32,
    "pca_patches": 256,  # with autoencoder.linear_path: training patches the starting linear code is fitted on
}
FINETUNE_PARTS = ("all", "decoder")
NORMALIZATION = {"kind": "fit_normalization", "function": "SynBTLib.preprocess.fit_normalization"}


@dataclass
class AutoencoderRun:
    """What a training run produced: the trained network (unwrapped), its latent scale, the files."""

    autoencoder: torch.nn.Module
    latent_scale: float
    losses: dict[str, float]
    bundle: Path | None
    out: Path


def merge_config(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replaced section by section (one level deep)."""
    merged = json.loads(json.dumps(base))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def measure_latent_scale(autoencoder, sampler: PatchSampler, count: int, device, step: int) -> float:
    """1 / std of the latent means of ``count`` training patches (a fixed, seeded draw)."""
    with torch.no_grad():
        batch = torch.from_numpy(sampler.sample(step, count, stream=7)).to(device)
        mu, _ = autoencoder.encode(batch)
    std = float(mu.float().std())
    if not std > 0:
        raise SynBTError("the autoencoder's latents are constant on the training patches; cannot set a latent scale")
    return 1.0 / std


def train_autoencoder(
    data: str | Path,
    out: str | Path,
    config: dict | None = None,
    resume: bool = False,
    device: str | None = None,
    command: str = "",
    verbose: bool = True,
    progress=None,
    write_bundle: bool = True,
) -> AutoencoderRun:
    """Train an autoencoder on the cases under ``data``; checkpoints, losses.csv and bundle/ go to ``out``.

    ``config`` overrides DEFAULT_CONFIG section by section. ``progress(done, total, message)`` is
    called after every step and may raise to stop (the last checkpoint stays resumable).
    """
    config = merge_config(DEFAULT_CONFIG, config or {})
    settings = TrainSettings.from_dict(config["training"])
    tumor_fraction = float(config["data"].get("tumor_fraction", 0.0))
    if not 0.0 <= tumor_fraction <= 1.0:
        raise SynBTError(f"data.tumor_fraction must be between 0 and 1, got {tumor_fraction}")
    kinetic_weight = config["loss"].get("kinetic_weight", 0.0)
    if not isinstance(kinetic_weight, (int, float)) or not kinetic_weight >= 0:
        raise SynBTError(f"loss.kinetic_weight must be a number >= 0, got {kinetic_weight!r}")
    source = _finetune_source(config)  # before any folder is made: a bad bundle changes nothing
    latent_noise = config["loss"].get("decoder_latent_noise", 0.0)
    if isinstance(latent_noise, bool) or not isinstance(latent_noise, (int, float)) or not latent_noise >= 0:
        raise SynBTError(f"loss.decoder_latent_noise must be a number >= 0, got {latent_noise!r}")
    if latent_noise > 0 and (source is None or config["finetune"].get("part", "all") != "decoder"):
        raise SynBTError("loss.decoder_latent_noise needs a decoder fine-tune (finetune.part \"decoder\"): "
                         "noise on the latent of a trained encoder")
    dist = setup_distributed(device)
    try:
        out = prepare_run_dir(out, resume, dist, data=data)
        config["data"]["phase_policy"] = data_phase_policy(data, config["data"].get("phase_policy"))
        cases = load_cases(data, progress=verbose and dist.is_main, with_tumors=tumor_fraction > 0,
                           policy=config["data"]["phase_policy"])
        phases = int(cases[0].image.shape[0])
        if source is not None:
            config["autoencoder"] = source.config["autoencoder"]
            if source.autoencoder.config.in_channels != phases:
                raise SynBTError(f"finetune bundle {source.path} was trained on {source.autoencoder.config.in_channels} "
                                 f"phases, the cases under {data} have {phases}")
        config["autoencoder"] = {**config["autoencoder"], "in_channels": phases}
        ae_config = AutoencoderConfig.from_dict(config["autoencoder"])
        config["autoencoder"] = ae_config.to_dict()
        _check_patch_size(config["data"]["patch_size"], 2 ** (len(ae_config.channels) - 1))

        seed_everything(settings.seed)
        autoencoder = PatchVolumeAutoencoder(ae_config).to(dist.device)
        decoder_only = source is not None and config["finetune"].get("part", "all") == "decoder"
        if source is not None:
            autoencoder.load_state_dict(source.autoencoder.state_dict())
        if decoder_only:
            for parameter in autoencoder.encoder_parameters():
                parameter.requires_grad_(False)
        models = {"autoencoder": autoencoder}
        optimizers = {"autoencoder": _adamw(autoencoder, settings)}
        loss_cfg = config["loss"]
        adversarial = float(loss_cfg.get("adversarial_weight", 0.0)) > 0
        if adversarial:
            models["discriminator"] = _discriminator(ae_config.in_channels, loss_cfg).to(dist.device)
            optimizers["discriminator"] = _adamw(models["discriminator"], settings)

        data_cfg = config["data"]
        sampler = PatchSampler(
            cases, data_cfg["patch_size"], settings.seed, dist.rank,
            flip_x=bool(data_cfg.get("flip_x", True)), body_fraction=float(data_cfg.get("body_fraction", 0.9)),
            tumor_fraction=tumor_fraction,
        )
        pca = None
        if ae_config.linear_path and source is None and not resume:
            # every rank draws the same patches (stream 11 of rank 0's sampler), so all start alike
            pca_sampler = PatchSampler(cases, data_cfg["patch_size"], settings.seed, 0, flip_x=False,
                                       body_fraction=sampler.body_fraction, tumor_fraction=tumor_fraction)
            patches = torch.from_numpy(pca_sampler.sample(0, int(config.get("pca_patches", 256)), stream=11))
            pca = autoencoder.init_linear_path(patches.to(dist.device))
            if verbose and dist.is_main:
                print(f"linear path: PCA of {len(patches)} patches keeps {pca['variance_kept']:.4f} "
                      "of the block variance")
        if kinetic_weight > 0 and phases < 2:
            raise SynBTError("loss.kinetic_weight needs at least two phases (it compares consecutive phases)")
        fields = ["loss", "l1", "kl", "latent_snr", "consistency"] + (["kinetic"] if kinetic_weight > 0 else []) + (
            ["generator", "discriminator"] if adversarial else [])
        trainer = Trainer(settings, dist, out, models, optimizers, fields, config, resume, "train-autoencoder", verbose)
        if dist.is_main:  # after the Trainer accepted a resume, so a refused one changes nothing
            (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        step_fn = _step_function(trainer, models, sampler, settings, loss_cfg, dist, decoder_only)
        losses = trainer.run(step_fn, progress)

        autoencoder.eval()
        if decoder_only:  # the encoder, hence the latent space, is the source's
            scale = source.latent_scale
        else:
            scale = measure_latent_scale(
                autoencoder, sampler, int(config.get("latent_scale_patches", 32)), dist.device, settings.steps
            )
        bundle_path = None
        if write_bundle and dist.is_main:
            meta = bundle_meta(cases, config, data, settings.steps, losses, command)
            extra = ""
            if source is not None:
                meta["finetuned_from"] = {"bundle": str(source.path), "sha256": source.sha256,
                                          "part": config["finetune"].get("part", "all")}
                extra = (f"- fine-tuned ({meta['finetuned_from']['part']}) from `{source.path}` "
                         f"(sha256 {source.sha256[:16]}...)\n")
            if pca is not None:
                meta["linear_path_init"] = {"patches": int(config.get("pca_patches", 256)), **pca}
                extra += f"- linear path started as the PCA of the training blocks ({pca['variance_kept']:.4f} " \
                         "of their variance)\n"
            card = model_card("autoencoder", data, cases, command, settings.steps, losses, scale, extra)
            bundle_path = save_bundle(out / "bundle", autoencoder, None, None, scale, meta, card, overwrite=True)
        dist.barrier()
        return AutoencoderRun(autoencoder, scale, losses, bundle_path, out)
    finally:
        teardown_distributed()


def _finetune_source(config: dict):
    """The bundle named by config["finetune"], loaded and verified, or None."""
    finetune = config.get("finetune")
    if finetune and isinstance(finetune, dict) and finetune.get("part", "all") not in FINETUNE_PARTS:
        raise SynBTError(f"finetune.part must be one of {', '.join(FINETUNE_PARTS)}, got {finetune.get('part')!r}")
    return finetune_bundle(config, {"autoencoder": ("in_channels",)},
                           '{"bundle": PATH, "part": "all" or "decoder"}')


def _check_patch_size(patch_size, compression: int) -> None:
    if len(patch_size) != 3 or any(int(p) % compression or int(p) < compression for p in patch_size):
        raise SynBTError(f"patch_size {patch_size} must be three multiples of the compression factor {compression}")


def _adamw(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)


def _discriminator(in_channels: int, loss_cfg: dict) -> torch.nn.Module:
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(
        spatial_dims=3,
        channels=int(loss_cfg.get("discriminator_channels", 16)),
        in_channels=in_channels,
        num_layers_d=int(loss_cfg.get("discriminator_layers", 2)),
        norm="INSTANCE",
    )


def _step_function(trainer: Trainer, models: dict, sampler: PatchSampler, settings: TrainSettings, loss_cfg: dict,
                   dist: Distributed, decoder_only: bool = False):
    from monai.losses import PatchAdversarialLoss

    autoencoder = models["autoencoder"]
    discriminator = models.get("discriminator")
    adversarial = PatchAdversarialLoss(criterion="least_squares") if discriminator is not None else None
    kl_weight = float(loss_cfg.get("kl_weight", 1e-6))
    consistency_weight = float(loss_cfg.get("consistency_weight", 0.0))
    kinetic_weight = float(loss_cfg.get("kinetic_weight", 0.0))
    adversarial_weight = float(loss_cfg.get("adversarial_weight", 0.0))
    latent_noise = float(loss_cfg.get("decoder_latent_noise", 0.0))

    def step(index: int) -> dict[str, float]:
        x = torch.from_numpy(sampler.sample(index, settings.batch_size)).to(dist.device)
        generator = step_torch_generator(settings.seed, index, dist.rank, stream=1, device=dist.device)
        with trainer.autocast():
            if decoder_only:  # the latent means, exactly what encode_volume gives the pipeline
                with torch.no_grad():
                    mu, sigma = autoencoder.encode(x)
                    noisy = mu + latent_noise * torch.randn(mu.shape, generator=generator, device=mu.device,
                                                            dtype=mu.dtype) if latent_noise > 0 else mu
                recon = autoencoder.decode(noisy)
            else:
                mu, sigma = autoencoder.encode(x)
                recon = autoencoder.decode(autoencoder.sample(mu, sigma, generator))
        recon = recon.float()
        l1 = torch.nn.functional.l1_loss(recon, x)
        kl = kl_loss(mu.float(), sigma.float())
        total = l1 if decoder_only else l1 + kl_weight * kl
        # spread of the latent means over the posterior noise: near or below 1, the KL term has
        # squeezed out what the latent can carry (raise the PSNR by lowering kl_weight)
        latent_snr = (mu.detach().float().std() / sigma.detach().float().mean().clamp_min(1e-12)).item()
        values = {"l1": l1.item(), "kl": kl.item(), "latent_snr": latent_snr}
        if kinetic_weight > 0:  # the subtraction images: phase k+1 - phase k
            kinetic = torch.nn.functional.l1_loss(recon.diff(dim=1), x.diff(dim=1))
            total = total + kinetic_weight * kinetic
            values["kinetic"] = kinetic.item()
        consistency = torch.zeros((), device=x.device)
        if consistency_weight > 0 and not decoder_only:
            with trainer.autocast():
                consistency = consistency_loss(autoencoder, x, mu, generator).float()
            total = total + consistency_weight * consistency
        values["consistency"] = consistency.item()
        if discriminator is not None:
            with trainer.autocast():
                fake_logits = discriminator(recon.contiguous())[-1]
            generator_loss = adversarial(fake_logits.float(), target_is_real=True, for_discriminator=False)
            total = total + adversarial_weight * generator_loss
            values["generator"] = generator_loss.item()
        trainer.optimize(total, "autoencoder")
        if discriminator is not None:
            with trainer.autocast():
                fake = discriminator(recon.detach().contiguous())[-1].float()
                real = discriminator(x.contiguous())[-1].float()
            d_loss = 0.5 * (
                adversarial(fake, target_is_real=False, for_discriminator=True)
                + adversarial(real, target_is_real=True, for_discriminator=True)
            )
            trainer.optimize(d_loss, "discriminator")
            values["discriminator"] = d_loss.item()
        values["loss"] = total.item()
        return values

    return step


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


def model_card(stage: str, data, cases: list[TrainingCase], command: str, steps: int, losses: dict, scale: float, extra: str = "") -> str:
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


def latent_scale_from_cases(autoencoder, cases, patch_size, seed: int, count: int, device) -> float:
    """Latent scale of an autoencoder checkpoint that has no bundle (measured on these cases)."""
    sampler = PatchSampler(cases, patch_size, seed, flip_x=False)
    return measure_latent_scale(autoencoder, sampler, count, device, step=0)

