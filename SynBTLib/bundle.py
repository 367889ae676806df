"""Model bundles: a folder with config.json, safetensors weights, a model card and SHA256SUMS.

Loading never unpickles anything: weights are read with safetensors, every file's sha256 is
checked against SHA256SUMS, and every tensor's shape against the network the config describes.
A bundle without a denoiser (written by ``synbt train-autoencoder``) is a partial bundle: its
``denoiser`` and ``scheduler`` load as None.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .calibration import IMAGE_CONFIG_KEY, ImageCalibration, LatentCalibration
from .errors import SynBTError
from .hashing import file_sha256
from .nets.latent_norm import ChannelStandardizer
from .paths import default_bundle_path  # noqa: F401  (re-exported)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
AUTOENCODER_FILE = "autoencoder.safetensors"
DENOISER_FILE = "denoiser.safetensors"
CARD_FILE = "MODEL_CARD.md"
SUMS_FILE = "SHA256SUMS"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
RESERVED_KEYS = ("format_version", "autoencoder", "denoiser", "scheduler", "latent_scale")


@dataclass
class Bundle:
    """A loaded bundle: the parsed config, networks in eval mode, the scheduler and the bundle hash."""

    config: dict[str, Any]
    autoencoder: torch.nn.Module
    denoiser: torch.nn.Module | None
    scheduler: Any | None
    latent_scale: float
    sha256: str
    path: Path
    channels: ChannelStandardizer = field(default_factory=ChannelStandardizer)  # identity without statistics
    calibration: LatentCalibration | None = None  # moment correction of generated tumors (calibration.py)
    image_calibration: ImageCalibration | None = None  # the same per phase, after decoding

    @property
    def phase_names(self) -> list[str]:
        return list(self.config.get("phase_names", []))


def bundle_sha256(path: str | Path) -> str:
    """The bundle's identity: sha256 of its SHA256SUMS file (which covers every other file)."""
    sums = Path(path) / SUMS_FILE
    if not sums.is_file():
        raise SynBTError(f"bundle {path} has no {SUMS_FILE} file")
    return file_sha256(sums)


def write_checksums(path: str | Path) -> Path:
    """(Re)write SHA256SUMS for every file of the bundle folder (sha256sum format)."""
    path = Path(path)
    lines = [
        f"{file_sha256(item)}  {item.name}\n"
        for item in sorted(path.iterdir())
        if item.is_file() and item.name != SUMS_FILE and not item.name.startswith(".")
    ]
    (path / SUMS_FILE).write_text("".join(lines))
    return path / SUMS_FILE


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Write a module's state dict as safetensors (contiguous CPU copies, no shared storage)."""
    from safetensors.torch import save_file

    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_weights(module: torch.nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    """Load safetensors weights into ``module`` after checking every name and shape; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = path.name
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SynBTError(f"{name} is not a valid safetensors file ({str(exc).splitlines()[0]})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise SynBTError(f"{name} lacks {len(missing)} tensors of the configured network, e.g. '{missing[0]}'")
    if unexpected:
        raise SynBTError(f"{name} has {len(unexpected)} tensors the configured network lacks, e.g. '{unexpected[0]}'")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise SynBTError(
                f"{name}: tensor '{key}' has shape {tuple(tensor.shape)} but the configured network "
                f"expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(tensors, strict=True)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)  # DistributedDataParallel wraps the network


def save_bundle(
    path: str | Path,
    autoencoder: torch.nn.Module,
    denoiser: torch.nn.Module | None,
    scheduler_config: Any | None,
    latent_scale: float,
    meta: dict[str, Any],
    card_text: str,
    overwrite: bool = False,
) -> Path:
    """Write a bundle folder atomically (built next to ``path``, then moved in place).

    ``meta`` goes into config.json beside the network configs: phases, phase_names,
    normalization, spacing, and any provenance. ``denoiser``/``scheduler_config`` may be None
    for an autoencoder-only bundle. Refuses an existing non-empty folder unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise SynBTError(f"bundle folder {path} already exists and is not empty; pass overwrite to replace it")
    clash = sorted(set(meta) & set(RESERVED_KEYS))
    if clash:
        raise SynBTError(f"bundle meta may not set the reserved key '{clash[0]}'")
    if not (latent_scale > 0 and float(latent_scale) < float("inf")):
        raise SynBTError(f"latent_scale must be a positive finite number, got {latent_scale}")
    autoencoder, denoiser = _unwrap(autoencoder), _unwrap(denoiser) if denoiser is not None else None
    config = {
        "format_version": FORMAT_VERSION,
        "autoencoder": autoencoder.config.to_dict(),
        "denoiser": denoiser.config.to_dict() if denoiser is not None else None,
        "scheduler": scheduler_config.to_dict() if scheduler_config is not None else None,
        "latent_scale": float(latent_scale),
        **meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_weights(autoencoder, staging / AUTOENCODER_FILE)
        if denoiser is not None:
            save_weights(denoiser, staging / DENOISER_FILE)
        (staging / CARD_FILE).write_text(card_text if card_text.endswith("\n") else card_text + "\n")
        write_checksums(staging)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check a bundle folder's files and hashes without building networks; returns config.json."""
    path = Path(path)
    if not path.is_dir():
        raise SynBTError(f"bundle folder {path} does not exist")
    for item in sorted(path.iterdir()):
        if item.suffix.lower() in PICKLE_SUFFIXES:
            raise SynBTError(f"bundle {path} holds the pickle-based file {item.name}; SynBT loads only safetensors weights")
    sums_path = path / SUMS_FILE
    if not sums_path.is_file():
        raise SynBTError(f"bundle {path} has no {SUMS_FILE} file")
    listed: dict[str, str] = {}
    for number, line in enumerate(sums_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise SynBTError(f"{SUMS_FILE} line {number} is malformed: '{line[:80]}'")
        name = name.strip()
        # a bundle is one flat folder: a listed name with a folder part could point outside it
        if name in (".", "..") or Path(name).name != name or "\\" in name or Path(name).is_absolute():
            raise SynBTError(f"bundle {path}: {SUMS_FILE} line {number} names '{name[:80]}', which is not a file of the bundle folder")
        listed[name] = digest.lower()
    for name in (CONFIG_FILE, AUTOENCODER_FILE, CARD_FILE):
        if name not in listed:
            raise SynBTError(f"bundle {path}: {SUMS_FILE} does not list the required file {name}")
    for name, digest in listed.items():
        if not (path / name).is_file():
            raise SynBTError(f"bundle {path} is missing the file {name}")
        if file_sha256(path / name) != digest:
            raise SynBTError(f"bundle {path}: {name} does not match its sha256 in {SUMS_FILE} (corrupted or edited)")
    for item in path.iterdir():
        if item.is_file() and item.name != SUMS_FILE and not item.name.startswith(".") and item.name not in listed:
            raise SynBTError(f"bundle {path}: {item.name} is not listed in {SUMS_FILE}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise SynBTError(f"bundle {path}: {CONFIG_FILE} is not valid JSON ({exc})") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise SynBTError(
            f"bundle {path}: format_version {config.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    if config.get("denoiser") is not None and DENOISER_FILE not in listed:
        raise SynBTError(f"bundle {path} configures a denoiser but is missing the file {DENOISER_FILE}")
    return config


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Verify and load a bundle; networks come back in eval mode on ``device``."""
    from .nets.autoencoder import AutoencoderConfig, PatchVolumeAutoencoder

    path = Path(path)
    config = verify_bundle(path)
    try:
        autoencoder = PatchVolumeAutoencoder(AutoencoderConfig.from_dict(config["autoencoder"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise SynBTError(f"bundle {path}: {CONFIG_FILE} has an invalid autoencoder config ({exc})") from None
    load_weights(autoencoder, path / AUTOENCODER_FILE)
    denoiser = scheduler = None
    if config.get("denoiser") is not None:
        from .nets.denoiser import DenoiserConfig, MaskConditionedDenoiser
        from .nets.scheduler import SchedulerConfig, make_scheduler

        try:
            denoiser = MaskConditionedDenoiser(DenoiserConfig.from_dict(config["denoiser"]))
            scheduler = make_scheduler(SchedulerConfig.from_dict(config.get("scheduler") or {}))
        except (TypeError, ValueError, KeyError) as exc:
            raise SynBTError(f"bundle {path}: {CONFIG_FILE} has an invalid denoiser/scheduler config ({exc})") from None
        load_weights(denoiser, path / DENOISER_FILE)
        denoiser.to(device).eval()
    autoencoder.to(device).eval()
    return Bundle(
        config=config,
        autoencoder=autoencoder,
        denoiser=denoiser,
        scheduler=scheduler,
        latent_scale=float(config["latent_scale"]),
        sha256=bundle_sha256(path),
        path=path,
        channels=ChannelStandardizer.from_config(config, autoencoder.config.latent_channels),
        calibration=_calibration_of(LatentCalibration, path, config, autoencoder.config.latent_channels),
        image_calibration=_calibration_of(ImageCalibration, path, config, autoencoder.config.in_channels),
    )


def _calibration_of(kind, path: Path, config: dict, channels: int):
    try:
        return kind.from_config(config, channels)
    except SynBTError as exc:
        raise SynBTError(f"bundle {path}: {CONFIG_FILE}: {exc}") from None


def replace_decoder(bundle: str | Path, decoder_bundle: str | Path, out: str | Path) -> Path:
    """A copy of ``bundle`` whose autoencoder decoder is ``decoder_bundle``'s; written to ``out``.

    For a decoder fine-tuned with a frozen encoder (train-autoencoder ``finetune.part: decoder``):
    the two autoencoders must have the same architecture, bit-identical encoder weights and the
    same latent scale, so the latent space, and the denoiser trained on it, is unchanged.
    Anything else is refused. Neither input is modified; ``out`` must be a new or empty folder.
    """
    out = Path(out)
    for source in (bundle, decoder_bundle):
        if out.resolve() == Path(source).resolve():
            raise SynBTError(f"--out {out} is one of the input bundles; write the combined bundle to a new folder")
    base, donor = load_bundle(bundle), load_bundle(decoder_bundle)
    if base.config["autoencoder"] != donor.config["autoencoder"]:
        raise SynBTError(f"the autoencoders of {bundle} and {decoder_bundle} have different architectures")
    same_encoder = all(torch.equal(a, b) for a, b in zip(base.autoencoder.encoder_parameters(),
                                                         donor.autoencoder.encoder_parameters()))
    if not same_encoder or base.latent_scale != donor.latent_scale:
        raise SynBTError(f"{decoder_bundle} has another encoder or latent scale than {bundle}: its latent space differs, "
                         "so the denoiser would not fit it (fine-tune with finetune.part = decoder, or train a new denoiser)")
    scheduler_config = None
    if base.config.get("scheduler") is not None:
        from .nets.scheduler import SchedulerConfig

        scheduler_config = SchedulerConfig.from_dict(base.config["scheduler"])
    # an image calibration was fitted on the old decoder's output: it does not carry over (the latent one does:
    # the encoder, hence the latent space, is unchanged)
    meta = {k: v for k, v in base.config.items() if k not in RESERVED_KEYS and k != IMAGE_CONFIG_KEY}
    dropped = IMAGE_CONFIG_KEY in base.config
    meta["decoder_from"] = {"bundle": str(decoder_bundle), "sha256": donor.sha256,
                            "training": donor.config.get("training"), "base_bundle_sha256": base.sha256}
    card = (base.path / CARD_FILE).read_text().rstrip("\n") + (
        f"\n\n## Decoder\n\nThe autoencoder decoder was replaced by the one of `{decoder_bundle}` "
        f"(sha256 {donor.sha256[:16]}...), fine-tuned with the encoder frozen, so the latent space is "
        f"unchanged (encoder weights checked bit-identical)."
        + (" The image calibration of the base bundle was fitted on its old decoder and was dropped; run "
           "`synbt calibrate` again." if dropped else "") + "\n\n" + (donor.path / CARD_FILE).read_text()
    )
    return save_bundle(out, donor.autoencoder, base.denoiser, scheduler_config, base.latent_scale, meta, card)
