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

import torch

from ..bundle import SUMS_FILE, load_bundle, save_bundle
from ..bundle_meta import DEFAULT_CONTEXT_MARGIN_MM, SynthesisSettings, phase_policy_of
from ..conditioning import mask_condition_channels
from ..errors import SynBTError
from ..necrosis import necrosis_statistics
from ..nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder
from ..nets.latent_norm import ChannelStandardizer, phase_group_sizes, phase_separating_rotation
from .bundle_outputs import bundle_meta, latent_scale_from_cases, model_card
from .common import TrainingRun, adamw, finetune_bundle, read_checkpoint, step_torch_generator
from .config import DiffusionTrainingConfig, check_patch_size
from .data import TumorRoiSampler, data_phase_policy, encode_cases, load_cases

DEFAULT_CONFIG = DiffusionTrainingConfig().to_dict()


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
    config: dict | DiffusionTrainingConfig | None = None,
    resume: bool = False,
    device: str | None = None,
    command: str = "",
    verbose: bool = True,
    progress=None,
    latent_cache: str | Path | None = None,
) -> DiffusionRun:
    """Train a denoiser for the autoencoder at ``autoencoder`` on the tumor cases under ``data``;
    checkpoints, losses.csv and the full bundle/ go to ``out``. ``config``: config.DiffusionTrainingConfig
    or its dict. ``progress(done, total, message)`` is called after every step and may raise to stop
    (the last checkpoint stays resumable). ``latent_cache``: a folder where encoded cases are kept for
    later runs on this autoencoder (training/latent_cache.py); entries are keyed by the encoder, the
    device type and the voxels."""
    run = DiffusionTraining(data, out, config, resume, device, command, verbose, progress)
    run.autoencoder_path, run.latent_cache = autoencoder, latent_cache
    return run.fit()


class DiffusionTraining(TrainingRun):
    """The diffusion trainer's hooks (see common.TrainingRun)."""

    name = "train-diffusion"
    config_class = DiffusionTrainingConfig
    autoencoder_path: str | Path = ""
    latent_cache: str | Path | None = None

    def check(self) -> None:
        """The finetune bundle (its denoiser and scheduler settings adopted into the config)."""
        config = self.config
        self.margin = config.context_margin_mm
        self.source = source = finetune_bundle(config.finetune, self.record(),
                                               {"denoiser": ("latent_channels",), "scheduler": ()})
        self.source_settings = None
        if source is None:
            return
        if source.denoiser is None:
            raise SynBTError(f"finetune bundle {source.path} has no denoiser to continue from")
        config.denoiser, config.scheduler = dict(source.config["denoiser"]), dict(source.config["scheduler"])
        normalization = source.config.get("training", {}).get("config", {}).get("latent_normalization", "global")
        if config.latent_normalization != normalization:
            raise SynBTError(f"latent_normalization {config.latent_normalization!r} differs from the finetune "
                             f"bundle's {normalization!r}")
        self.source_settings = SynthesisSettings.from_config(source.config)
        if self.source_settings.mask_dilation_cells != config.mask_dilation_cells:
            raise SynBTError(f"mask_dilation_cells {config.mask_dilation_cells} differs from the finetune bundle's "
                             f"{self.source_settings.mask_dilation_cells}: its denoiser learned another region")
        if self.margin is None:
            self.margin = self.source_settings.context_margin_mm

    def before_run_dir(self) -> None:
        """Load the frozen autoencoder and refuse what it rules out, before any case is read or anything written."""
        config, source = self.config, self.source
        self.frozen = frozen = load_autoencoder(self.autoencoder_path, self.dist.device)
        net = frozen.network
        if config.latent_normalization == "phase" and not net.config.linear_path:
            raise SynBTError("latent_normalization 'phase' needs an autoencoder with a linear path "
                             f"(linear_path: true); {frozen.source} has none")
        kinetic, necrosis = config.kinetic_conditioning, config.necrosis_conditioning
        if kinetic and net.config.in_channels < 3:
            raise SynBTError("kinetic_conditioning needs a pre-contrast and at least two post-contrast phases")
        self.rotation = None
        if config.latent_normalization == "phase" and source is None:
            weight = net.linear_decoder.weight.detach().cpu().numpy()
            self.rotation = phase_separating_rotation(weight)
            groups = phase_group_sizes(weight, self.rotation)
            if groups[0] >= net.config.latent_channels:
                raise SynBTError(f"latent_normalization 'phase' separates nothing here: every one of the "
                                 f"{net.config.latent_channels} latent channels changes the pre-contrast phase "
                                 f"(a cell has {net.config.compression ** 3} voxels); use 'channel'")
            config.latent_phase_groups = groups
        self.mask_channels = mask_condition_channels(config.mask_encoding, net.config.compression, necrosis)
        if necrosis and net.config.in_channels < 2:
            raise SynBTError("necrosis_conditioning needs a pre-contrast and a post-contrast phase")
        self.widen = False
        if source is None:
            return
        if self.source_settings.mask_encoding != config.mask_encoding:
            # checked by name: with necrosis, "cells" has as many channels as "voxels" without
            raise SynBTError(f"mask_encoding {config.mask_encoding!r} differs from the finetune bundle's "
                             f"{self.source_settings.mask_encoding!r}")
        source_necrosis = bool(config.denoiser.get("necrosis", False))
        if source_necrosis and not necrosis:
            raise SynBTError("the finetune bundle's denoiser was trained with necrosis_conditioning; keep it on")
        self.widen = necrosis and not source_necrosis
        if not self.widen and int(config.denoiser.get("mask_channels", 1)) != self.mask_channels:
            raise SynBTError(f"mask_encoding {config.mask_encoding!r} differs from the finetune bundle's "
                             f"denoiser ({config.denoiser.get('mask_channels', 1)} mask channels)")
        if bool(config.denoiser.get("kinetic_classes", False)) != kinetic:
            raise SynBTError(f"kinetic_conditioning {kinetic} differs from the finetune bundle's denoiser")
        if not config.finetune.warm_start:
            _check_same_latent_space(source, frozen)

    def load_data(self) -> None:
        """Read and encode the tumor cases; set the denoiser's config; the ROI sampler."""
        from ..nets.denoiser import DenoiserConfig
        from ..nets.scheduler import SchedulerConfig

        config, frozen, settings, data = self.config, self.frozen, self.settings, self.data
        self.ae = ae = frozen.network.eval().requires_grad_(False)
        policy = config.data.phase_policy or frozen.phase_policy
        if frozen.phase_policy is not None and policy != frozen.phase_policy:
            raise SynBTError(f"data.phase_policy {policy!r} differs from the autoencoder's {frozen.phase_policy!r}")
        config.data.phase_policy = data_phase_policy(data, policy)
        self.cases = cases = load_cases(data, need_tumors=True, progress=self.loud, policy=config.data.phase_policy)
        if cases[0].image.shape[0] != ae.config.in_channels:
            raise SynBTError(
                f"the autoencoder expects {ae.config.in_channels} phases but the cases in {data} have {cases[0].image.shape[0]}"
            )
        kinetic, necrosis = config.kinetic_conditioning, config.necrosis_conditioning
        config.denoiser = {**config.denoiser, "latent_channels": ae.config.latent_channels,
                           "mask_channels": self.mask_channels, "kinetic_classes": kinetic, "necrosis": necrosis}
        self.den_config = DenoiserConfig.from_dict(config.denoiser)
        self.sched_config = SchedulerConfig.from_dict(config.scheduler)
        config.autoencoder = ae.config.to_dict()
        config.denoiser, config.scheduler = self.den_config.to_dict(), self.sched_config.to_dict()
        config.autoencoder_source = frozen.source
        roi = list(config.data.roi_size)
        check_patch_size("data.roi_size", roi, ae.config.compression * self.den_config.downsampling,
                         "autoencoder x denoiser downsampling")
        scale = frozen.latent_scale
        if scale is None:
            patch = [4 * ae.config.compression] * 3
            scale = latent_scale_from_cases(ae, cases, patch, settings.seed, config.latent_scale_patches, self.dist.device)
        config.latent_scale = self.scale = scale

        self.encoded = encoded = encode_cases(
            cases, ae, scale, roi, flip_x=config.data.flip_x, device=self.dist.device, progress=self.loud,
            mask_dilation_cells=config.mask_dilation_cells, mask_encoding=config.mask_encoding,
            cache_dir=self.latent_cache, kinetics=kinetic, necrosis=necrosis, jitter=config.data.jitter,
        )
        if necrosis and not any(f > 0 for c in encoded for _, f in (c.tumor_necrosis or [])):
            raise SynBTError(f"no training tumor in {data} has a necrotic (non-enhancing) core; train without "
                             "necrosis_conditioning")
        if kinetic and not any(c.tumor_kinetics is not None and c.tumor_kinetics.any() for c in encoded):
            raise SynBTError(f"no training tumor in {data} could be given a curve type; train without kinetic_conditioning")
        self.channels = ChannelStandardizer()
        if config.latent_normalization in ("channel", "phase"):
            # mean 0 / std 1 per channel over the training latents (see nets/latent_norm.py); a
            # continued denoiser keeps the statistics it was trained with
            self.channels = (self.source.channels if self.source is not None
                             else ChannelStandardizer.fit([w.latent for item in encoded for w in item.windows],
                                                          rotation=self.rotation))
            for window in (w for item in encoded for w in item.windows):
                window.latent = self.channels.standardize(window.latent, channel_axis=0)
                window.context = self.channels.standardize(window.context, channel_axis=0)
        latent_roi = [v // ae.config.compression for v in roi]
        self.sampler = TumorRoiSampler(encoded, latent_roi, settings.seed, self.dist.rank, config.data.jitter)

    def build(self):
        from ..nets.denoiser import MaskConditionedDenoiser
        from ..nets.scheduler import make_scheduler

        self.denoiser = denoiser = MaskConditionedDenoiser(self.den_config).to(self.dist.device)
        if self.source is not None:
            state = self.source.denoiser.state_dict()
            denoiser.load_state_dict(widened_input(state, denoiser.state_dict()) if self.widen else state)
        self.scheduler = make_scheduler(self.sched_config)
        return {"denoiser": denoiser}, {"denoiser": adamw(denoiser, self.settings)}

    def train_step(self, index: int) -> dict[str, float]:
        from ..nets.denoiser import drop_condition, drop_kinetics
        from ..nets.scheduler import training_target

        config, settings, device, scheduler = self.config, self.settings, self.dist.device, self.scheduler
        latent, context, mask, kinetics = (torch.from_numpy(a).to(device)
                                           for a in self.sampler.sample(index, settings.batch_size))
        generator = step_torch_generator(settings.seed, index, self.dist.rank, stream=1, device=device)
        noise = torch.randn(latent.shape, generator=generator, device=device)
        t = torch.randint(0, self.sched_config.num_train_timesteps, (latent.shape[0],), generator=generator,
                          device=device)
        noisy = scheduler.add_noise(latent, noise, t)
        # the generated region, also where the condition is dropped
        weight = loss_weight(mask[:, :1], config.mask_loss_weight, config.mask_loss_balanced)
        context, mask = drop_condition(context, mask, config.condition_dropout, generator)
        extra = ({"kinetics": drop_kinetics(kinetics, config.kinetics_dropout, generator)}
                 if config.kinetic_conditioning else {})
        with self.trainer.autocast():
            prediction = self.denoiser(noisy, context, mask, t, **extra)
        loss = weighted_mse(prediction.float(), training_target(scheduler, latent, noise, t), weight)
        self.trainer.optimize(loss, "denoiser")
        return {"loss": loss.item()}

    def finish(self, losses: dict[str, float]) -> DiffusionRun:
        from ..nets.denoiser import KINETIC_CLASSES

        bundle_path = None
        if self.is_main:
            config, source, encoded, record = self.config, self.source, self.encoded, self.record()
            meta = {**bundle_meta(self.cases, record, self.data, self.settings.steps, losses, self.command),
                    **self.channels.to_config()}
            meta["training"]["autoencoder"] = self.frozen.source
            types = [t for c in encoded for t in (c.whole_tumor_types or [])]
            meta.update(SynthesisSettings(
                spacing=meta["spacing"],
                context_margin_mm=DEFAULT_CONTEXT_MARGIN_MM if self.margin is None else float(self.margin),
                mask_dilation_cells=config.mask_dilation_cells, mask_encoding=config.mask_encoding,
                # how many whole training tumors had each curve type: the pipeline draws from these
                kinetic_frequencies=({name: types.count(name) for name in KINETIC_CLASSES}
                                     if config.kinetic_conditioning else None),
                # how often and how large the training tumors' cores were: the pipeline draws from these
                necrosis=(necrosis_statistics([r for c in encoded for r in (c.tumor_necrosis or [])])
                          if config.necrosis_conditioning else {}),
            ).to_config())
            extra = (f"- autoencoder: {self.frozen.source}\n- ROI size: {list(config.data.roi_size)} voxels, "
                     f"condition dropout {config.condition_dropout}\n")
            if source is not None:
                meta["finetuned_from"] = {"bundle": str(source.path), "sha256": source.sha256,
                                          "warm_start": config.finetune.warm_start}
                extra += f"- denoiser continued from `{source.path}` (sha256 {source.sha256[:16]}...)\n"
            card = model_card("autoencoder + denoiser", self.data, self.cases, self.command, self.settings.steps,
                              losses, self.scale, extra)
            bundle_path = save_bundle(self.out / "bundle", self.ae, self.denoiser.eval(), self.sched_config,
                                      self.scale, meta, card, overwrite=True)
        return DiffusionRun(self.denoiser, losses, bundle_path, self.out)


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


def _check_same_latent_space(source, frozen: FrozenAutoencoder) -> None:
    """Refuse to continue a denoiser on an autoencoder whose latents differ from the ones it learned."""
    ours = frozen.network
    same = (source.autoencoder.config.to_dict() == ours.config.to_dict()
            and all(torch.equal(a.to(b.device), b) for a, b in zip(source.autoencoder.encoder_parameters(),
                                                                  ours.encoder_parameters())))
    if not same or frozen.latent_scale is None or frozen.latent_scale != source.latent_scale:
        raise SynBTError(f"the finetune bundle {source.path} was trained in another latent space than --autoencoder "
                         f"({frozen.source}); continue it with its own autoencoder, or train a new denoiser")
