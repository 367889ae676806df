"""Train the patch-to-volume autoencoder on random patches; write an autoencoder-only bundle.

Loss (config ``loss``, config.AutoencoderLoss): L1 reconstruction + kl_weight * KL (summed over
latent elements, while L1 is a voxel mean) + consistency_weight * patch/volume consistency
(nets.autoencoder.consistency_loss) + kinetic_weight * L1 of the differences between consecutive
phases (the subtraction images) + adversarial_weight * a patch-GAN term (MONAI PatchDiscriminator).
At the end the latent scale (1 / std of the latent means of training patches) is stored in the bundle.

Fine-tuning (``"finetune": {"bundle": PATH, "part": "all" | "decoder"}``) starts from a bundle's
autoencoder. With ``part: "decoder"`` the encoder is frozen and the decoder learns to decode the
latent means (no posterior sampling, no KL or consistency term), so the latent space, and any
denoiser trained on it, stays valid; the bundle keeps the source's latent scale and
``bundle.replace_decoder`` puts the new decoder under a diffusion bundle.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..bundle import save_bundle
from ..errors import SynBTError
from ..nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder, consistency_loss, kl_loss
from .bundle_outputs import bundle_meta, measure_latent_scale, model_card
from .common import TrainingRun, adamw, finetune_bundle, step_torch_generator
from .config import AutoencoderTrainingConfig, check_patch_size
from .data import PatchSampler, data_phase_policy, load_cases

DEFAULT_CONFIG = AutoencoderTrainingConfig().to_dict()


@dataclass
class AutoencoderRun:
    """What a training run produced: the trained network (unwrapped), its latent scale, the files."""

    autoencoder: torch.nn.Module
    latent_scale: float
    losses: dict[str, float]
    bundle: Path | None
    out: Path


def train_autoencoder(
    data: str | Path,
    out: str | Path,
    config: dict | AutoencoderTrainingConfig | None = None,
    resume: bool = False,
    device: str | None = None,
    command: str = "",
    verbose: bool = True,
    progress=None,
    write_bundle: bool = True,
) -> AutoencoderRun:
    """Train an autoencoder on the cases under ``data``; checkpoints, losses.csv and bundle/ go to ``out``.

    ``config`` (config.AutoencoderTrainingConfig or its dict) overrides the defaults section by
    section. ``progress(done, total, message)`` is called after every step and may raise to stop
    (the last checkpoint stays resumable).
    """
    run = AutoencoderTraining(data, out, config, resume, device, command, verbose, progress)
    run.write_bundle = write_bundle
    return run.fit()


class AutoencoderTraining(TrainingRun):
    """The autoencoder trainer's hooks (see common.TrainingRun)."""

    name = "train-autoencoder"
    config_class = AutoencoderTrainingConfig
    write_bundle = True

    def check(self) -> None:
        # the finetune bundle is read before any folder is made: a bad bundle changes nothing
        self.source = finetune_bundle(self.config.finetune, self.record(), {"autoencoder": ("in_channels",)})

    def load_data(self) -> None:
        config, source = self.config, self.source
        config.data.phase_policy = data_phase_policy(self.data, config.data.phase_policy)
        self.cases = load_cases(self.data, progress=self.loud, with_tumors=config.data.tumor_fraction > 0,
                                policy=config.data.phase_policy)
        phases = int(self.cases[0].image.shape[0])
        if source is not None:
            config.autoencoder = source.config["autoencoder"]
            if source.autoencoder.config.in_channels != phases:
                raise SynBTError(f"finetune bundle {source.path} was trained on {source.autoencoder.config.in_channels} "
                                 f"phases, the cases under {self.data} have {phases}")
        self.ae_config = AutoencoderConfig.from_dict({**config.autoencoder, "in_channels": phases})
        config.autoencoder = self.ae_config.to_dict()
        check_patch_size("data.patch_size", config.data.patch_size, self.ae_config.compression,
                         "the autoencoder's compression factor")
        if config.loss.kinetic_weight > 0 and phases < 2:
            raise SynBTError("loss.kinetic_weight needs at least two phases (it compares consecutive phases)")

    def build(self):
        config, settings, device = self.config, self.settings, self.dist.device
        autoencoder = PatchVolumeAutoencoder(self.ae_config).to(device)
        if self.source is not None:
            autoencoder.load_state_dict(self.source.autoencoder.state_dict())
        if config.decoder_only:
            for parameter in autoencoder.encoder_parameters():
                parameter.requires_grad_(False)
        self.autoencoder = autoencoder
        models, optimizers = {"autoencoder": autoencoder}, {"autoencoder": adamw(autoencoder, settings)}
        self.discriminator = None
        if config.loss.adversarial_weight > 0:
            from monai.networks.nets import PatchDiscriminator

            self.discriminator = models["discriminator"] = PatchDiscriminator(
                spatial_dims=3, channels=config.loss.discriminator_channels, in_channels=self.ae_config.in_channels,
                num_layers_d=config.loss.discriminator_layers, norm="INSTANCE",
            ).to(device)
            optimizers["discriminator"] = adamw(self.discriminator, settings)
        data_cfg = config.data
        self.sampler = PatchSampler(self.cases, data_cfg.patch_size, settings.seed, self.dist.rank,
                                    flip_x=data_cfg.flip_x, body_fraction=data_cfg.body_fraction,
                                    tumor_fraction=data_cfg.tumor_fraction)
        self.pca = None
        if self.ae_config.linear_path and self.source is None and not self.resume:
            # every rank draws the same patches (stream 11 of rank 0's sampler), so all start alike
            pca_sampler = PatchSampler(self.cases, data_cfg.patch_size, settings.seed, 0, flip_x=False,
                                       body_fraction=data_cfg.body_fraction, tumor_fraction=data_cfg.tumor_fraction)
            patches = torch.from_numpy(pca_sampler.sample(0, config.pca_patches, stream=11))
            self.pca = autoencoder.init_linear_path(patches.to(device))
            if self.loud:
                print(f"linear path: PCA of {len(patches)} patches keeps {self.pca['variance_kept']:.4f} "
                      "of the block variance")
        return models, optimizers

    def log_fields(self) -> list[str]:
        loss = self.config.loss
        return ["loss", "l1", "kl", "latent_snr", "consistency"] + (["kinetic"] if loss.kinetic_weight > 0 else []) + (
            ["generator", "discriminator"] if self.discriminator is not None else [])

    def on_train_start(self) -> None:
        from monai.losses import PatchAdversarialLoss

        self.adversarial = PatchAdversarialLoss(criterion="least_squares") if self.discriminator is not None else None

    def train_step(self, index: int) -> dict[str, float]:
        trainer, settings, dist, sampler = self.trainer, self.settings, self.dist, self.sampler
        autoencoder, discriminator, adversarial = self.autoencoder, self.discriminator, self.adversarial
        weights, decoder_only = self.config.loss, self.config.decoder_only
        kl_weight, consistency_weight = weights.kl_weight, weights.consistency_weight
        kinetic_weight, adversarial_weight = weights.kinetic_weight, weights.adversarial_weight
        latent_noise = weights.decoder_latent_noise
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

    def finish(self, losses: dict[str, float]) -> AutoencoderRun:
        config, source, autoencoder = self.config, self.source, self.autoencoder
        autoencoder.eval()
        if config.decoder_only:  # the encoder, hence the latent space, is the source's
            scale = source.latent_scale
        else:
            scale = measure_latent_scale(autoencoder, self.sampler, config.latent_scale_patches, self.dist.device,
                                         self.settings.steps)
        bundle_path = None
        if self.write_bundle and self.is_main:
            steps, cases = self.settings.steps, self.cases
            meta = bundle_meta(cases, self.record(), self.data, steps, losses, self.command)
            extra = ""
            if source is not None:
                meta["finetuned_from"] = {"bundle": str(source.path), "sha256": source.sha256,
                                          "part": config.finetune.part}
                extra = (f"- fine-tuned ({config.finetune.part}) from `{source.path}` "
                         f"(sha256 {source.sha256[:16]}...)\n")
            if self.pca is not None:
                meta["linear_path_init"] = {"patches": config.pca_patches, **self.pca}
                extra += f"- linear path started as the PCA of the training blocks ({self.pca['variance_kept']:.4f} " \
                         "of their variance)\n"
            card = model_card("autoencoder", self.data, cases, self.command, steps, losses, scale, extra)
            bundle_path = save_bundle(self.out / "bundle", autoencoder, None, None, scale, meta, card, overwrite=True)
        return AutoencoderRun(autoencoder, scale, losses, bundle_path, self.out)
