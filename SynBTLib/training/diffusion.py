"""Train the mask-conditioned denoiser on tumor ROIs in the latent space of a frozen autoencoder.

Each case (and its x-flipped copy) is encoded once, with and without its tumors erased; a step
crops fixed-size latent ROIs around random tumors, noises them with the DDIM scheduler's
``add_noise`` at random timesteps and regresses the noise (epsilon MSE) or, with
``"scheduler": {"prediction_type": "v_prediction"}``, the velocity v. The condition (erased
context latent + latent mask) is dropped to the null condition with ``condition_dropout`` for
classifier-free guidance. The result is a full bundle (autoencoder + denoiser + scheduler).

``"finetune": {"bundle": PATH}`` continues from a full bundle's denoiser (its architecture,
scheduler and latent normalization are kept): more steps for an undertrained denoiser, or new
data. The bundle's latent space must be the autoencoder's (encoder weights bit-identical, same
latent scale), else the run is refused; ``"warm_start": true`` accepts another latent space on
purpose (an autoencoder fine-tuned from the bundle's: the old denoiser is then only a starting point).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bundle import SUMS_FILE, load_bundle, save_bundle
from ..bundle_meta import DEFAULT_CONTEXT_MARGIN_MM, SynthesisSettings, phase_policy_of
from ..conditioning import MASK_ENCODINGS, mask_condition_channels
from ..errors import SynBTError
from ..necrosis import necrosis_statistics
from ..nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder
from ..nets.latent_norm import ChannelStandardizer, phase_group_sizes, phase_separating_rotation
from .autoencoder import bundle_meta, latent_scale_from_cases, merge_config, model_card
from .common import (
    TrainSettings,
    Trainer,
    finetune_bundle,
    prepare_run_dir,
    read_checkpoint,
    seed_everything,
    setup_distributed,
    step_torch_generator,
    teardown_distributed,
)
from .data import TumorRoiSampler, data_phase_policy, encode_cases, load_cases

DEFAULT_CONFIG = {
    "denoiser": {},  # DenoiserConfig defaults, with latent_channels set from the autoencoder
    "scheduler": {},  # SchedulerConfig defaults
    "training": {"steps": 4000, "batch_size": 4, "lr": 1e-4, "seed": 0, "checkpoint_every": 200, "warmup_steps": 100},
    "data": {"roi_size": [64, 64, 64], "flip_x": True, "jitter": 0.25},
    "condition_dropout": 0.1,
    "latent_scale_patches": 32,
    # or "channel": mean 0 / std 1 per latent channel; or "phase": rotated first so that channels
    # group by the DCE phase they change, then standardized (linear-path autoencoders; nets/latent_norm.py)
    "latent_normalization": "global",
    # extra weight of the noise error inside the tumor mask: the ROI is mostly context, which the
    # sampler replaces anyway, so an unweighted loss spends most of its signal outside the tumor
    "mask_loss_weight": 0.0,
    # (optional) "mask_loss_balanced": true gives every sample's tumor region the same share of that
    # weight whatever its size (loss_weight). Absent from the defaults so that checkpoints of older
    # runs still resume.
    # tissue around the mask the pipeline gives this denoiser as context, recorded in the bundle
    # (None: the pipeline's default, 16 mm)
    "context_margin_mm": None,
    # latent cells around the tumor that the denoiser generates too and that are erased from its
    # context (conditioning.generation_region); 0 = exactly the tumor's cells, as older bundles
    "mask_dilation_cells": 0,
    # what the denoiser is told of the mask: "cells" = the latent cells to generate (older bundles);
    # "voxels" adds the tumor's outline to the voxel (conditioning.denoiser_condition)
    "mask_encoding": "cells",
    # the tumor's BI-RADS curve type (measured on each training tumor) as a class label of the
    # denoiser, dropped to "unspecified" with kinetics_dropout (nets/denoiser.py KINETIC_CLASSES)
    "kinetic_conditioning": False,
    "kinetics_dropout": 0.2,
    # (optional) "necrosis_conditioning": true: the mask condition also carries each training tumor's
    # necrotic core, measured on its image (necrosis.py); a finetune bundle without it is widened (its
    # denoiser's weights for the new channels start at 0, so it starts out as it was). Absent from the
    # defaults so that checkpoints of older runs still resume.
}


def loss_weight(region: torch.Tensor, mask_weight: float, balanced: bool = False) -> torch.Tensor:
    """(B, 1, z, y, x) per-cell loss weight: 1 + mask_weight inside the generated ``region``. With
    ``balanced`` each sample's extra weight is rescaled so that every sample's region carries the same
    total: mask_weight times the mean region size of the batch's samples that have one."""
    region = (region > 0).to(torch.float32)
    if not balanced:
        return 1.0 + mask_weight * region
    cells = region.sum(dim=(1, 2, 3, 4), keepdim=True)
    has = cells > 0
    mean = cells.sum() / has.sum().clamp(min=1)  # no host sync on a GPU
    share = torch.where(has, mean / cells.clamp(min=1.0), torch.zeros_like(cells))
    return 1.0 + mask_weight * region * share


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error with a per-voxel weight (B, 1, z, y, x) shared by the channels."""
    squared = (prediction - target).pow(2) * weight
    return squared.sum() / (weight.sum() * prediction.shape[1])


@dataclass
class FrozenAutoencoder:
    """The autoencoder the denoiser is trained for, where it came from, and its latent scale (None: measure it)."""

    network: torch.nn.Module
    latent_scale: float | None
    source: str
    phase_policy: str | None = None  # the phases it was trained on (None: all, in file order)


@dataclass
class DiffusionRun:
    denoiser: torch.nn.Module
    losses: dict[str, float]
    bundle: Path | None
    out: Path


def load_autoencoder(path: str | Path, device="cpu") -> FrozenAutoencoder:
    """The autoencoder from a bundle folder, a train-autoencoder run folder, or its checkpoint.pt."""
    path = Path(path)
    if path.is_dir() and not (path / SUMS_FILE).is_file() and (path / "bundle" / SUMS_FILE).is_file():
        path = path / "bundle"  # a train-autoencoder output folder
    if path.is_dir():
        bundle = load_bundle(path, device=device)
        return FrozenAutoencoder(bundle.autoencoder, bundle.latent_scale, f"bundle {path} (sha256 {bundle.sha256})",
                                 phase_policy_of(bundle.config))
    if path.is_file():
        state = read_checkpoint(path)
        config = json.loads(state["config"])
        if "autoencoder" not in state["models"]:
            raise SynBTError(f"checkpoint {path} holds no autoencoder")
        network = PatchVolumeAutoencoder(AutoencoderConfig.from_dict(config["autoencoder"]))
        network.load_state_dict(state["models"]["autoencoder"])
        return FrozenAutoencoder(network.to(device).eval(), None, f"checkpoint {path} (step {state['step']})",
                                 config.get("data", {}).get("phase_policy"))
    raise SynBTError(f"--autoencoder {path} is neither a bundle folder, a train-autoencoder output folder nor a checkpoint")


def train_diffusion(
    data: str | Path,
    autoencoder: str | Path,
    out: str | Path,
    config: dict | None = None,
    resume: bool = False,
    device: str | None = None,
    command: str = "",
    verbose: bool = True,
    progress=None,
    latent_cache: str | Path | None = None,
) -> DiffusionRun:
    """Train a denoiser for the autoencoder at ``autoencoder`` on the tumor cases under ``data``;
    checkpoints, losses.csv and the full bundle/ go to ``out``. ``progress(done, total, message)``
    is called after every step and may raise to stop (the last checkpoint stays resumable).
    ``latent_cache``: a folder where encoded cases are kept for later runs on this autoencoder
    (training/latent_cache.py); entries are keyed by the encoder, the device type and the voxels."""
    # monai's generative networks: loaded only when a denoiser is trained
    from ..nets.denoiser import KINETIC_CLASSES, DenoiserConfig, MaskConditionedDenoiser, drop_condition, drop_kinetics
    from ..nets.scheduler import SchedulerConfig, make_scheduler, training_target

    config = merge_config(DEFAULT_CONFIG, config or {})
    settings = TrainSettings.from_dict(config["training"])
    if config["latent_normalization"] not in ("global", "channel", "phase"):
        raise SynBTError(f"latent_normalization must be 'global', 'channel' or 'phase', "
                         f"got {config['latent_normalization']!r}")
    mask_weight = float(config["mask_loss_weight"])
    if not mask_weight >= 0:
        raise SynBTError(f"mask_loss_weight must be 0 or more, got {config['mask_loss_weight']!r}")
    balanced = config.get("mask_loss_balanced", False)
    if not isinstance(balanced, bool):
        raise SynBTError(f"mask_loss_balanced must be true or false, got {balanced!r}")
    if balanced and mask_weight == 0:
        raise SynBTError("mask_loss_balanced shares out mask_loss_weight, which is 0: set mask_loss_weight > 0")
    margin = config["context_margin_mm"]
    if margin is not None and not (isinstance(margin, (int, float)) and margin > 0):
        raise SynBTError(f"context_margin_mm must be a positive number of mm (or null), got {margin!r}")
    dilation = config["mask_dilation_cells"]
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise SynBTError(f"mask_dilation_cells must be a whole number of latent cells, 0 or more, got {dilation!r}")
    if config["mask_encoding"] not in MASK_ENCODINGS:
        raise SynBTError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {config['mask_encoding']!r}")
    source = _finetune_source(config)
    source_settings = None if source is None else SynthesisSettings.from_config(source.config)
    if source is not None and source_settings.mask_dilation_cells != dilation:
        raise SynBTError(f"mask_dilation_cells {dilation} differs from the finetune bundle's "
                         f"{source_settings.mask_dilation_cells}: its denoiser learned another region")
    if source is not None and margin is None:
        margin = source_settings.context_margin_mm
    dist = setup_distributed(device)
    try:
        frozen = load_autoencoder(autoencoder, dist.device)
        if config["latent_normalization"] == "phase" and not frozen.network.config.linear_path:
            raise SynBTError("latent_normalization 'phase' needs an autoencoder with a linear path "
                             f"(linear_path: true); {frozen.source} has none")
        # checks that need only the autoencoder, before any case is read or anything written
        net = frozen.network
        kinetic = bool(config["kinetic_conditioning"])
        if kinetic and not 0 < float(config["kinetics_dropout"]) < 1:
            raise SynBTError(f"kinetics_dropout must be between 0 and 1 (exclusive: 'unspecified' must be "
                             f"learned too), got {config['kinetics_dropout']!r}")
        if kinetic and net.config.in_channels < 3:
            raise SynBTError("kinetic_conditioning needs a pre-contrast and at least two post-contrast phases")
        rotation = None
        if config["latent_normalization"] == "phase" and source is None:
            weight = net.linear_decoder.weight.detach().cpu().numpy()
            rotation = phase_separating_rotation(weight)
            groups = phase_group_sizes(weight, rotation)
            if groups[0] >= net.config.latent_channels:
                raise SynBTError(f"latent_normalization 'phase' separates nothing here: every one of the "
                                 f"{net.config.latent_channels} latent channels changes the pre-contrast phase "
                                 f"(a cell has {net.config.compression ** 3} voxels); use 'channel'")
            config["latent_phase_groups"] = groups
        necrosis = config.get("necrosis_conditioning", False)
        if not isinstance(necrosis, bool):
            raise SynBTError(f"necrosis_conditioning must be true or false, got {necrosis!r}")
        mask_channels = mask_condition_channels(config["mask_encoding"], net.config.compression, necrosis)
        if necrosis and net.config.in_channels < 2:
            raise SynBTError("necrosis_conditioning needs a pre-contrast and a post-contrast phase")
        if source is not None and source_settings.mask_encoding != config["mask_encoding"]:
            # checked by name: with necrosis, "cells" has as many channels as "voxels" without
            raise SynBTError(f"mask_encoding {config['mask_encoding']!r} differs from the finetune bundle's "
                             f"{source_settings.mask_encoding!r}")
        source_necrosis = source is not None and bool(config["denoiser"].get("necrosis", False))
        if source_necrosis and not necrosis:
            raise SynBTError("the finetune bundle's denoiser was trained with necrosis_conditioning; keep it on")
        widen = source is not None and necrosis and not source_necrosis
        if source is not None and not widen and int(config["denoiser"].get("mask_channels", 1)) != mask_channels:
            raise SynBTError(f"mask_encoding {config['mask_encoding']!r} differs from the finetune bundle's "
                             f"denoiser ({config['denoiser'].get('mask_channels', 1)} mask channels)")
        if source is not None and bool(config["denoiser"].get("kinetic_classes", False)) != kinetic:
            raise SynBTError(f"kinetic_conditioning {kinetic} differs from the finetune bundle's denoiser")
        if source is not None and not config["finetune"].get("warm_start", False):
            _check_same_latent_space(source, frozen)
        out = prepare_run_dir(out, resume, dist, data=data)
        ae = frozen.network.eval().requires_grad_(False)
        policy = config["data"].get("phase_policy") or frozen.phase_policy
        if frozen.phase_policy is not None and policy != frozen.phase_policy:
            raise SynBTError(f"data.phase_policy {policy!r} differs from the autoencoder's {frozen.phase_policy!r}")
        config["data"]["phase_policy"] = data_phase_policy(data, policy)
        cases = load_cases(data, need_tumors=True, progress=verbose and dist.is_main, policy=config["data"]["phase_policy"])
        if cases[0].image.shape[0] != ae.config.in_channels:
            raise SynBTError(
                f"the autoencoder expects {ae.config.in_channels} phases but the cases in {data} have {cases[0].image.shape[0]}"
            )
        config["denoiser"] = {**config["denoiser"], "latent_channels": ae.config.latent_channels,
                              "mask_channels": mask_channels, "kinetic_classes": kinetic, "necrosis": necrosis}
        den_config = DenoiserConfig.from_dict(config["denoiser"])
        sched_config = SchedulerConfig.from_dict(config["scheduler"])
        config.update(autoencoder=ae.config.to_dict(), denoiser=den_config.to_dict(), scheduler=sched_config.to_dict())
        config["autoencoder_source"] = frozen.source
        roi = [int(v) for v in config["data"]["roi_size"]]
        multiple = ae.config.compression * den_config.downsampling
        if len(roi) != 3 or any(v % multiple or v < multiple for v in roi):
            raise SynBTError(f"roi_size {roi} must be three multiples of {multiple} (autoencoder x denoiser downsampling)")
        scale = frozen.latent_scale
        if scale is None:
            patch = [4 * ae.config.compression] * 3
            scale = latent_scale_from_cases(ae, cases, patch, settings.seed, int(config["latent_scale_patches"]), dist.device)
        config["latent_scale"] = scale

        encoded = encode_cases(
            cases, ae, scale, roi, flip_x=bool(config["data"].get("flip_x", True)),
            device=dist.device, progress=verbose and dist.is_main, mask_dilation_cells=dilation,
            mask_encoding=config["mask_encoding"], cache_dir=latent_cache, kinetics=kinetic, necrosis=necrosis,
        )
        if necrosis and not any(f > 0 for c in encoded for _, f in (c.tumor_necrosis or [])):
            raise SynBTError(f"no training tumor in {data} has a necrotic (non-enhancing) core; train without "
                             "necrosis_conditioning")
        if kinetic and not any(c.tumor_kinetics is not None and c.tumor_kinetics.any() for c in encoded):
            raise SynBTError(f"no training tumor in {data} could be given a curve type; train without kinetic_conditioning")
        channels = ChannelStandardizer()
        if config["latent_normalization"] in ("channel", "phase"):
            # mean 0 / std 1 per channel over the training latents (see nets/latent_norm.py); a
            # continued denoiser keeps the statistics it was trained with
            channels = (source.channels if source is not None
                        else ChannelStandardizer.fit([item.latent for item in encoded], rotation=rotation))
            for item in encoded:
                item.latent = channels.standardize(item.latent, channel_axis=0)
                item.context = channels.standardize(item.context, channel_axis=0)
        latent_roi = [v // ae.config.compression for v in roi]
        sampler = TumorRoiSampler(encoded, latent_roi, settings.seed, dist.rank, float(config["data"].get("jitter", 0.25)))

        seed_everything(settings.seed)
        denoiser = MaskConditionedDenoiser(den_config).to(dist.device)
        if source is not None:
            state = source.denoiser.state_dict()
            denoiser.load_state_dict(widened_input(state, denoiser.state_dict()) if widen else state)
        scheduler = make_scheduler(sched_config)
        optimizer = torch.optim.AdamW(denoiser.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        trainer = Trainer(
            settings, dist, out, {"denoiser": denoiser}, {"denoiser": optimizer}, ["loss"], config, resume,
            "train-diffusion", verbose,
        )
        if dist.is_main:  # after the Trainer accepted a resume, so a refused one changes nothing
            (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        dropout = float(config["condition_dropout"])
        kinetics_dropout = float(config["kinetics_dropout"])
        timesteps_total = sched_config.num_train_timesteps

        def step(index: int) -> dict[str, float]:
            latent, context, mask, kinetics = (torch.from_numpy(a).to(dist.device)
                                               for a in sampler.sample(index, settings.batch_size))
            generator = step_torch_generator(settings.seed, index, dist.rank, stream=1, device=dist.device)
            noise = torch.randn(latent.shape, generator=generator, device=dist.device)
            t = torch.randint(0, timesteps_total, (latent.shape[0],), generator=generator, device=dist.device)
            noisy = scheduler.add_noise(latent, noise, t)
            # the generated region, also where the condition is dropped
            weight = loss_weight(mask[:, :1], mask_weight, balanced)
            context, mask = drop_condition(context, mask, dropout, generator)
            extra = {"kinetics": drop_kinetics(kinetics, kinetics_dropout, generator)} if kinetic else {}
            with trainer.autocast():
                prediction = denoiser(noisy, context, mask, t, **extra)
            loss = weighted_mse(prediction.float(), training_target(scheduler, latent, noise, t), weight)
            trainer.optimize(loss, "denoiser")
            return {"loss": loss.item()}

        losses = trainer.run(step, progress)
        bundle_path = None
        if dist.is_main:
            meta = {**bundle_meta(cases, config, data, settings.steps, losses, command), **channels.to_config()}
            meta["training"]["autoencoder"] = frozen.source
            types = [t for c in encoded for t in (c.whole_tumor_types or [])]
            meta.update(SynthesisSettings(
                spacing=meta["spacing"],
                context_margin_mm=DEFAULT_CONTEXT_MARGIN_MM if margin is None else float(margin),
                mask_dilation_cells=dilation, mask_encoding=config["mask_encoding"],
                # how many whole training tumors had each curve type: the pipeline draws from these
                kinetic_frequencies={name: types.count(name) for name in KINETIC_CLASSES} if kinetic else None,
                # how often and how large the training tumors' cores were: the pipeline draws from these
                necrosis=necrosis_statistics([r for c in encoded for r in (c.tumor_necrosis or [])]) if necrosis else {},
            ).to_config())
            if source is not None:
                meta["finetuned_from"] = {"bundle": str(source.path), "sha256": source.sha256,
                                          "warm_start": bool(config["finetune"].get("warm_start", False))}
                extra_source = f"- denoiser continued from `{source.path}` (sha256 {source.sha256[:16]}...)\n"
            else:
                extra_source = ""
            extra = f"- autoencoder: {frozen.source}\n- ROI size: {roi} voxels, condition dropout {dropout}\n" + extra_source
            card = model_card("autoencoder + denoiser", data, cases, command, settings.steps, losses, scale, extra)
            bundle_path = save_bundle(out / "bundle", ae, denoiser.eval(), sched_config, scale, meta, card, overwrite=True)
        dist.barrier()
        return DiffusionRun(denoiser, losses, bundle_path, out)
    finally:
        teardown_distributed()


def widened_input(source: dict, target: dict) -> dict:
    """``source`` state dict fitted to ``target``'s: tensors whose input dimension (1) grew get the new
    input channels appended with zero weights (a network that ignores them at first); any other
    difference is refused."""
    out = {}
    for key, value in source.items():
        want = target.get(key)
        if want is None:
            raise SynBTError(f"the finetune bundle's denoiser has a weight {key} this denoiser lacks")
        if want.shape != value.shape:
            if value.ndim < 2 or want.shape[:1] != value.shape[:1] or want.shape[2:] != value.shape[2:] \
                    or want.shape[1] < value.shape[1]:
                raise SynBTError(f"cannot continue the finetune bundle's {key} {tuple(value.shape)} as {tuple(want.shape)}")
            grown = torch.zeros(want.shape, dtype=value.dtype)
            grown[:, : value.shape[1]] = value
            value = grown
        out[key] = value
    return out


def _finetune_source(config: dict):
    """The full bundle named by config["finetune"] (its denoiser settings adopted into config), or None."""
    source = finetune_bundle(config, {"denoiser": ("latent_channels",), "scheduler": ()},
                             '{"bundle": PATH} (a full bundle with a denoiser)')
    if source is None:
        return None
    if source.denoiser is None:
        raise SynBTError(f"finetune bundle {source.path} has no denoiser to continue from")
    config["denoiser"], config["scheduler"] = dict(source.config["denoiser"]), dict(source.config["scheduler"])
    normalization = source.config.get("training", {}).get("config", {}).get("latent_normalization", "global")
    if config["latent_normalization"] != normalization:
        raise SynBTError(f"latent_normalization {config['latent_normalization']!r} differs from the finetune "
                         f"bundle's {normalization!r}")
    return source


def _check_same_latent_space(source, frozen: FrozenAutoencoder) -> None:
    """Refuse to continue a denoiser on an autoencoder whose latents differ from the ones it learned."""
    ours = frozen.network
    same = (source.autoencoder.config.to_dict() == ours.config.to_dict()
            and all(torch.equal(a.to(b.device), b) for a, b in zip(source.autoencoder.encoder_parameters(),
                                                                  ours.encoder_parameters())))
    if not same or frozen.latent_scale is None or frozen.latent_scale != source.latent_scale:
        raise SynBTError(f"the finetune bundle {source.path} was trained in another latent space than --autoencoder "
                         f"({frozen.source}); continue it with its own autoencoder, or train a new denoiser")
