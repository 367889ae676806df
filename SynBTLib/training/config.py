"""Typed training configs: one dataclass per trainer, read from the JSON config files with every field checked.

``XConfig.from_dict(raw)`` merges ``raw`` over the trainer's defaults section by section (one level
deep, as the config files are written), refuses unknown keys and bad values with one line naming
the field (``loss.kl_weight must be ...``), and ``to_dict()`` gives back the complete config that
runs record (checkpoint, config.json, bundle). Earlier runs recorded only the keys they were given;
reading those records through ``from_dict`` fills in the defaults, so they compare equal to a
config written today (``migrate``).

The network sections (``autoencoder``, ``denoiser``, ``scheduler``) stay plain dicts here: the
networks' own config classes (nets/) check them when the run builds its networks.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass

from ..errors import SynBTError


# ------------------------------------------------------------------------- checks of one value


def _fail(where: str, what: str, value) -> None:
    raise SynBTError(f"{where} must be {what}, got {value!r}")


def number(where: str, value, minimum=None, maximum=None, above=None, below=None) -> float:
    """A finite real number (not a bool) within the given bounds, as float."""
    bounds = [f"{word} {bound}" for word, bound in
              (("at least", minimum), ("above", above), ("at most", maximum), ("below", below)) if bound is not None]
    what = " ".join(["a number", " and ".join(bounds)]).strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            (minimum is not None and value < minimum) or (maximum is not None and value > maximum)
            or (above is not None and value <= above) or (below is not None and value >= below)):
        _fail(where, what, value)
    return float(value)


def whole(where: str, value, minimum: int = 0) -> int:
    """A whole number (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(where, f"a whole number of at least {minimum}", value)
    return value


def flag(where: str, value) -> bool:
    if not isinstance(value, bool):
        _fail(where, "true or false", value)
    return value


def choice(where: str, value, choices) -> str:
    if value not in choices:
        _fail(where, f"one of {', '.join(map(str, choices))}", value)
    return value


def size3(where: str, value, multiple: int = 1) -> tuple[int, int, int]:
    """Three whole multiples of ``multiple`` (a patch or ROI size in voxels, z/y/x or x/y/z as the trainer says)."""
    if not isinstance(value, (list, tuple)) or len(value) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < multiple or v % multiple for v in value):
        _fail(where, f"three multiples of {multiple}" if multiple > 1 else "three positive whole numbers",
              value if not isinstance(value, tuple) else list(value))
    return tuple(int(v) for v in value)


def check_patch_size(where: str, value, multiple: int, why: str) -> None:
    """Refuse a patch/ROI size that is not three multiples of the network's ``multiple`` (``why`` names it)."""
    try:
        size3(where, value, multiple)
    except SynBTError:
        raise SynBTError(f"{where} {list(value)} must be three multiples of {multiple} ({why})") from None


def optional_path(where: str, value) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        _fail(where, "a path (or null)", value)
    return value


# ----------------------------------------------------------------------------- sections


class Section:
    """A dataclass section of a config: read from a dict (unknown keys refused), written back as JSON values."""

    @classmethod
    def from_dict(cls, data, where: str):
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise SynBTError(f"{where} must be a table of settings, got {data!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise SynBTError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {where} "
                             f"(known: {', '.join(names)})")
        return cls(**data)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def merged_sections(cls, raw: dict | None, where: str = "the config") -> dict:
    """The field values of ``cls`` for ``raw`` merged over ``cls()``'s defaults, one level deep:
    a section given in ``raw`` replaces only the keys it names."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SynBTError(f"{where} must be a table of settings, got {raw!r}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise SynBTError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {where} "
                         f"(known: {', '.join(sorted(names))})")
    values = {}
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        given = raw.get(f.name, MISSING)
        if isinstance(default, Section):
            if given is not MISSING and not isinstance(given, (dict, Section)):
                raise SynBTError(f"{f.name} must be a table of settings, got {given!r}")
            if isinstance(given, Section):
                values[f.name] = given
            else:
                values[f.name] = type(default).from_dict({**asdict(default), **({} if given is MISSING else given)}, f.name)
        elif isinstance(default, dict) and given is not MISSING:
            if not isinstance(given, dict):
                raise SynBTError(f"{f.name} must be a table of settings, got {given!r}")
            values[f.name] = {**default, **given}
        else:
            values[f.name] = default if given is MISSING else given
    return values


class TrainingConfig(Section):
    """Base of the trainers' configs: ``from_dict`` merges over the defaults (see merged_sections)."""

    @classmethod
    def from_dict(cls, data=None, where: str = "the config"):
        if isinstance(data, cls):
            return data
        return cls(**merged_sections(cls, data, where))

    @classmethod
    def migrate(cls, recorded: dict) -> dict:
        """A config recorded by an earlier run (keys absent where it was not given) in today's full form."""
        return cls.from_dict(recorded).to_dict()


AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainSettings(Section):
    """The "training" section: the loop's settings, shared by every trainer."""

    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 100
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    amp: str = "auto"
    compile: bool = False  # torch.compile every network's forward (nn.Module.compile): for long GPU runs
    interval_optional = False  # (not a field) train-seg sets checkpoint_every from its epochs

    def __post_init__(self):
        self.steps = whole("training.steps", self.steps, 1)
        self.batch_size = whole("training.batch_size", self.batch_size, 1)
        if self.checkpoint_every is not None or not self.interval_optional:
            self.checkpoint_every = whole("training.checkpoint_every", self.checkpoint_every, 1)
        self.lr = number("training.lr", self.lr, above=0)
        self.seed = whole("training.seed", self.seed, 0)
        self.warmup_steps = whole("training.warmup_steps", self.warmup_steps, 0)
        self.min_lr_ratio = number("training.min_lr_ratio", self.min_lr_ratio, minimum=0, maximum=1)
        self.weight_decay = number("training.weight_decay", self.weight_decay, minimum=0)
        self.grad_clip = number("training.grad_clip", self.grad_clip, minimum=0)
        choice("training.amp", self.amp, AMP_MODES)
        if not isinstance(self.compile, bool):
            raise SynBTError(f"training.compile must be true or false, got {self.compile!r}")


def _settings(**defaults):
    return field(default_factory=lambda: TrainSettings(**defaults))


# --------------------------------------------------------------------------- autoencoder

FINETUNE_PARTS = ("all", "decoder")


@dataclass
class AutoencoderData(Section):
    """Patches (z, y, x voxels), x-flips, the share of patches centred in the body / on a tumor, the phases."""

    patch_size: tuple[int, int, int] = (32, 32, 32)
    flip_x: bool = True
    body_fraction: float = 0.9
    tumor_fraction: float = 0.0
    phase_policy: str | None = None

    def __post_init__(self):
        self.patch_size = size3("data.patch_size", self.patch_size)
        flag("data.flip_x", self.flip_x)
        self.body_fraction = number("data.body_fraction", self.body_fraction, minimum=0, maximum=1)
        self.tumor_fraction = number("data.tumor_fraction", self.tumor_fraction, minimum=0, maximum=1)
        optional_path("data.phase_policy", self.phase_policy)


@dataclass
class AutoencoderLoss(Section):
    """L1 + kl_weight * KL + consistency_weight * patch/volume consistency + kinetic_weight * L1 of the
    phase differences + adversarial_weight * patch-GAN term; decoder_latent_noise (decoder fine-tunes
    only): Gaussian noise, in latent units, on the latent means the decoder learns to decode."""

    kl_weight: float = 1e-6
    consistency_weight: float = 0.1
    kinetic_weight: float = 0.0
    adversarial_weight: float = 0.0
    decoder_latent_noise: float = 0.0
    discriminator_channels: int = 16
    discriminator_layers: int = 2

    def __post_init__(self):
        for name in ("kl_weight", "consistency_weight", "kinetic_weight", "adversarial_weight", "decoder_latent_noise"):
            setattr(self, name, number(f"loss.{name}", getattr(self, name), minimum=0))
        whole("loss.discriminator_channels", self.discriminator_channels, 1)
        whole("loss.discriminator_layers", self.discriminator_layers, 1)


@dataclass
class AutoencoderFinetune(Section):
    """Start from a bundle's autoencoder: all of it, or only its decoder (the encoder stays frozen)."""

    bundle: str = ""
    part: str = "all"

    def __post_init__(self):
        if not isinstance(self.bundle, str) or not self.bundle:
            _fail("finetune.bundle", 'a bundle folder ({"bundle": PATH, "part": "all" or "decoder"})', self.bundle)
        choice("finetune.part", self.part, FINETUNE_PARTS)


@dataclass
class AutoencoderTrainingConfig(TrainingConfig):
    """The config of `synbt train-autoencoder` (configs/autoencoder.json).

    autoencoder: nets.autoencoder.AutoencoderConfig keys (in_channels comes from the data);
    latent_scale_patches: training patches the latent scale is measured on; pca_patches: with
    autoencoder.linear_path, the patches the starting linear code is fitted on."""

    autoencoder: dict = field(default_factory=dict)
    training: TrainSettings = _settings(steps=2000, batch_size=2, lr=1e-4, seed=0, checkpoint_every=200,
                                        warmup_steps=100)
    data: AutoencoderData = field(default_factory=AutoencoderData)
    loss: AutoencoderLoss = field(default_factory=AutoencoderLoss)
    latent_scale_patches: int = 32
    pca_patches: int = 256
    finetune: AutoencoderFinetune | None = None

    def __post_init__(self):
        if not isinstance(self.autoencoder, dict):
            _fail("autoencoder", "a table of network settings", self.autoencoder)
        whole("latent_scale_patches", self.latent_scale_patches, 1)
        whole("pca_patches", self.pca_patches, 1)
        if self.finetune is not None and not isinstance(self.finetune, AutoencoderFinetune):
            if not isinstance(self.finetune, dict):
                _fail("finetune", '{"bundle": PATH, "part": "all" or "decoder"}', self.finetune)
            self.finetune = AutoencoderFinetune.from_dict(self.finetune, "finetune") if self.finetune else None
        if self.loss.decoder_latent_noise > 0 and not self.decoder_only:
            raise SynBTError('loss.decoder_latent_noise needs a decoder fine-tune (finetune.part "decoder"): '
                             "noise on the latent of a trained encoder")

    @property
    def decoder_only(self) -> bool:
        return self.finetune is not None and self.finetune.part == "decoder"


# ----------------------------------------------------------------------------- diffusion

LATENT_NORMALIZATIONS = ("global", "channel", "phase")
MASK_ENCODINGS = ("cells", "voxels")  # conditioning.MASK_ENCODINGS (not imported: it pulls torch)


@dataclass
class DiffusionData(Section):
    """Latent ROIs around the tumors: their size in voxels (x, y, z), x-flips, the centre jitter, the phases."""

    roi_size: tuple[int, int, int] = (64, 64, 64)
    flip_x: bool = True
    jitter: float = 0.25
    phase_policy: str | None = None

    def __post_init__(self):
        self.roi_size = size3("data.roi_size", self.roi_size)
        flag("data.flip_x", self.flip_x)
        self.jitter = number("data.jitter", self.jitter, minimum=0)
        optional_path("data.phase_policy", self.phase_policy)


@dataclass
class DiffusionFinetune(Section):
    """Continue a full bundle's denoiser; warm_start accepts another latent space on purpose."""

    bundle: str = ""
    warm_start: bool = False

    def __post_init__(self):
        if not isinstance(self.bundle, str) or not self.bundle:
            _fail("finetune.bundle", '{"bundle": PATH} (a full bundle with a denoiser)', self.bundle)
        flag("finetune.warm_start", self.warm_start)


@dataclass
class DiffusionTrainingConfig(TrainingConfig):
    """The config of `synbt train-diffusion` (configs/diffusion.json).

    denoiser / scheduler: nets.denoiser.DenoiserConfig / nets.scheduler.SchedulerConfig keys.
    condition_dropout: how often the condition is dropped (classifier-free guidance).
    latent_normalization: "global" (the latent scale only), "channel" (mean 0 / std 1 per latent
    channel) or "phase" (rotated so channels group by the phase they change, then standardized;
    linear-path autoencoders, nets/latent_norm.py).
    mask_loss_weight: extra weight of the noise error inside the generated region; with
    mask_loss_balanced every sample's region gets the same share of it whatever its size.
    context_margin_mm: tissue around the mask the pipeline gives this denoiser (None: 16 mm).
    mask_dilation_cells: latent cells around the tumor generated too and erased from the context.
    mask_encoding: "cells" (the latent cells to generate) or "voxels" (adds the tumor's outline).
    kinetic_conditioning: the tumor's curve type as a class label, dropped with kinetics_dropout.
    necrosis_conditioning: the mask condition also carries the tumor's necrotic core.
    The last four fields are recorded by the run (what it trained on), not set by hand."""

    denoiser: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    training: TrainSettings = _settings(steps=4000, batch_size=4, lr=1e-4, seed=0, checkpoint_every=200,
                                        warmup_steps=100)
    data: DiffusionData = field(default_factory=DiffusionData)
    condition_dropout: float = 0.1
    latent_scale_patches: int = 32
    latent_normalization: str = "global"
    mask_loss_weight: float = 0.0
    mask_loss_balanced: bool = False
    context_margin_mm: float | None = None
    mask_dilation_cells: int = 0
    mask_encoding: str = "cells"
    kinetic_conditioning: bool = False
    kinetics_dropout: float = 0.2
    necrosis_conditioning: bool = False
    finetune: DiffusionFinetune | None = None
    autoencoder: dict | None = None
    autoencoder_source: str | None = None
    latent_scale: float | None = None
    latent_phase_groups: list | None = None

    def __post_init__(self):
        for name in ("denoiser", "scheduler"):
            if not isinstance(getattr(self, name), dict):
                _fail(name, "a table of network settings", getattr(self, name))
        self.condition_dropout = number("condition_dropout", self.condition_dropout, minimum=0, below=1)
        whole("latent_scale_patches", self.latent_scale_patches, 1)
        choice("latent_normalization", self.latent_normalization, LATENT_NORMALIZATIONS)
        self.mask_loss_weight = number("mask_loss_weight", self.mask_loss_weight, minimum=0)
        flag("mask_loss_balanced", self.mask_loss_balanced)
        if self.mask_loss_balanced and self.mask_loss_weight == 0:
            raise SynBTError("mask_loss_balanced shares out mask_loss_weight, which is 0: set mask_loss_weight > 0")
        if self.context_margin_mm is not None:
            self.context_margin_mm = number("context_margin_mm", self.context_margin_mm, above=0)
        whole("mask_dilation_cells", self.mask_dilation_cells, 0)
        choice("mask_encoding", self.mask_encoding, MASK_ENCODINGS)
        flag("kinetic_conditioning", self.kinetic_conditioning)
        # exclusive: "unspecified" must be learned too, and so must the types
        self.kinetics_dropout = number("kinetics_dropout", self.kinetics_dropout, above=0, below=1)
        flag("necrosis_conditioning", self.necrosis_conditioning)
        if self.finetune is not None and not isinstance(self.finetune, DiffusionFinetune):
            if not isinstance(self.finetune, dict):
                _fail("finetune", '{"bundle": PATH} (a full bundle with a denoiser)', self.finetune)
            self.finetune = DiffusionFinetune.from_dict(self.finetune, "finetune") if self.finetune else None


# -------------------------------------------------------------------------- segmentation

SYNTHETIC_MODES = ("none", "offline", "on-the-fly")
SEGMENTATION_NETWORKS = ("unet", "segresnet")


@dataclass
class SegmentationNetwork(Section):
    """MONAI UNet (channels per level, num_res_units) or SegResNet (init filters = channels[0],
    blocks_down / blocks_up, default (1, 2, 2, 4) / (1, 1, 1)); subtraction adds post1 - pre as an input."""

    name: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 2
    dropout: float = 0.0
    subtraction: bool = True
    blocks_down: tuple[int, ...] | None = None
    blocks_up: tuple[int, ...] | None = None

    def __post_init__(self):
        choice("model.name", self.name, SEGMENTATION_NETWORKS)
        if not isinstance(self.channels, (list, tuple)) or not self.channels or any(
                isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.channels):
            _fail("model.channels", "a list of positive whole numbers", self.channels)
        self.channels = tuple(self.channels)
        whole("model.num_res_units", self.num_res_units, 0)
        self.dropout = number("model.dropout", self.dropout, minimum=0, below=1)
        flag("model.subtraction", self.subtraction)
        for name in ("blocks_down", "blocks_up"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (list, tuple)) or not value or any(
                        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                    _fail(f"model.{name}", "a list of positive whole numbers", value)
                setattr(self, name, tuple(value))

    @property
    def divisor(self) -> int:
        """Patch sizes must be multiples of this (the network's total downsampling)."""
        if self.name == "segresnet":
            return 2 ** (len(self.blocks_down or (1, 2, 2, 4)) - 1)
        return 2 ** (len(self.channels) - 1)


@dataclass
class SegmentationSettings(TrainSettings):
    """The "training" section of train-seg: epochs (of data.steps_per_epoch steps) override steps;
    checkpoint_every None: every epoch."""

    epochs: int | None = None
    interval_optional = True

    def __post_init__(self):
        super().__post_init__()
        if self.epochs is not None:
            whole("training.epochs (--epochs)", self.epochs, 1)


@dataclass
class SegmentationData(Section):
    """Patches (z, y, x voxels), the share centred on a tumor voxel, x-flips, steps per epoch, the phases."""

    patch_size: tuple[int, int, int] = (32, 64, 64)
    pos_fraction: float = 0.67
    flip_x: bool = True
    steps_per_epoch: int = 100
    phase_policy: str | None = None

    def __post_init__(self):
        self.patch_size = size3("data.patch_size", self.patch_size)
        self.pos_fraction = number("data.pos_fraction", self.pos_fraction, minimum=0, maximum=1)
        flag("data.flip_x", self.flip_x)
        whole("data.steps_per_epoch", self.steps_per_epoch, 1)
        optional_path("data.phase_policy", self.phase_policy)


@dataclass
class SyntheticTumors(Section):
    """Synthetic tumors mixed into the batches: none, an offline folder (dir), or synthesized on the fly by
    ``method`` ("handcrafted" or "diffusion" with ``bundle`` and ``steps`` sampling steps); ratio: their share
    of a batch; pos_fraction: the share of synthetic samples centred on a tumor, the rest are background patches
    of the synthetic cases' body (None: data.pos_fraction, as the real patches); size_mm, kinds, context_mm,
    shape_pool and workers shape the on-the-fly tumors."""

    mode: str = "none"
    dir: str | None = None
    method: str = "handcrafted"
    bundle: str | None = None
    steps: int | None = None
    ratio: float = 0.5
    pos_fraction: float | None = None
    size_mm: tuple[float, float] = (10.0, 40.0)
    kinds: list[str] | None = None
    context_mm: float = 16.0
    shape_pool: int | None = 20
    workers: int = 2

    def __post_init__(self):
        choice("synthetic.mode (--synthetic)", self.mode, SYNTHETIC_MODES)
        if self.mode == "offline" and not self.dir:
            raise SynBTError("synthetic.dir: --synthetic offline needs the folder of synthetic cases "
                             "(--synthetic offline DIR)")
        optional_path("synthetic.dir", self.dir)
        choice("synthetic.method (--method)", self.method, ("handcrafted", "diffusion"))
        optional_path("synthetic.bundle (--bundle)", self.bundle)
        if self.steps is not None:
            whole("synthetic.steps (--synthesis-steps)", self.steps, 1)
        self.ratio = number("synthetic.ratio (--ratio)", self.ratio, minimum=0, maximum=1)
        if self.pos_fraction is not None:
            self.pos_fraction = number("synthetic.pos_fraction", self.pos_fraction, minimum=0, maximum=1)
        if not isinstance(self.size_mm, (list, tuple)) or len(self.size_mm) != 2:
            _fail("synthetic.size_mm", "two diameters [smallest, largest] in mm", self.size_mm)
        low, high = (number("synthetic.size_mm", v, above=0) for v in self.size_mm)
        if low > high:
            _fail("synthetic.size_mm", "two diameters [smallest, largest] in mm", self.size_mm)
        self.size_mm = (low, high)
        if self.kinds is not None and (not isinstance(self.kinds, (list, tuple))
                                       or not all(isinstance(k, str) for k in self.kinds)):
            _fail("synthetic.kinds", "a list of shape kinds (or null)", self.kinds)
        self.context_mm = number("synthetic.context_mm", self.context_mm, above=0)
        if self.shape_pool is not None:
            whole("synthetic.shape_pool", self.shape_pool, 1)
        whole("synthetic.workers (--workers)", self.workers, 0)


@dataclass
class SegmentationValidation(Section):
    """Validation cases (dir, or --val), Dice every ``every`` steps (None: every epoch), sliding-window settings."""

    dir: str | None = None
    every: int | None = None
    overlap: float = 0.25
    sw_batch_size: int = 2

    def __post_init__(self):
        optional_path("validation.dir (--val)", self.dir)
        if self.every is not None:
            whole("validation.every", self.every, 1)
        self.overlap = number("validation.overlap", self.overlap, minimum=0, below=1)
        whole("validation.sw_batch_size", self.sw_batch_size, 1)


@dataclass
class SegmentationTrainingConfig(TrainingConfig):
    """The config of `synbt train-seg` (configs/segmentation.json). Epochs are turned into steps, and an
    unset checkpoint or validation interval becomes one epoch."""

    model: SegmentationNetwork = field(default_factory=SegmentationNetwork)
    training: SegmentationSettings = field(default_factory=lambda: SegmentationSettings(
        steps=2000, batch_size=4, lr=1e-3, seed=0, checkpoint_every=None, warmup_steps=20, min_lr_ratio=0.05,
        weight_decay=1e-5, grad_clip=1.0, amp="auto"))
    data: SegmentationData = field(default_factory=SegmentationData)
    synthetic: SyntheticTumors = field(default_factory=SyntheticTumors)
    validation: SegmentationValidation = field(default_factory=SegmentationValidation)

    def __post_init__(self):
        per_epoch = self.data.steps_per_epoch
        if self.training.epochs is not None:
            self.training.steps = self.training.epochs * per_epoch
        if self.training.checkpoint_every is None:
            self.training.checkpoint_every = per_epoch
        if self.validation.every is None:
            self.validation.every = per_epoch
        check_patch_size("data.patch_size", self.data.patch_size, self.model.divisor, "the network's downsampling")


def config_dict(config) -> dict:
    """A typed config (or a plain dict) as the JSON dict runs record."""
    if is_dataclass(config):
        return config.to_dict()
    return json.loads(json.dumps(config))
