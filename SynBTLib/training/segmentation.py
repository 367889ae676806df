"""Tumor segmentation training (MONAI UNet/SegResNet) on real cases mixed with synthetic tumors.

Inputs are all DCE phases as channels (normalized per case with preprocess.fit_normalization),
plus optionally the first subtraction (post1 - pre). Each step draws a batch of patches: a
fraction ``ratio`` of synthetic samples (offline synthetic cases, or tumors synthesized on the
fly by training/onthefly.py) and real patches, centred on a tumor voxel with probability
``pos_fraction`` and on a random body voxel otherwise (RandCropByPosNegLabel-style, but seeded
by (seed, step, rank) so resume is exact). Loss: DiceCE. Validation: sliding-window inference
and Dice on --val cases every ``validation.every`` steps (default: every epoch); the best model
is written to ``model/`` (safetensors + config.json), and ``predict_case`` applies it.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..case import Case, Geometry
from ..errors import SynBTError
from ..store import log
from .common import LOG_FILE, TrainingRun, adamw, step_rng
from .config import SegmentationNetwork, SegmentationTrainingConfig
from .data import crop

MODEL_DIR = "model"
WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
NNUNET_MISSING = "nnunetv2 is not installed: pip install 'synbt[nnunet]'"
MAX_CENTERS = 200_000  # body / tumor voxels kept per case as patch-centre candidates

DEFAULT_CONFIG = SegmentationTrainingConfig().to_dict()


def resolve_config(config: dict | SegmentationTrainingConfig | None) -> dict:
    """The complete config for ``config`` (defaults merged in, epochs turned into steps, every value checked)."""
    return SegmentationTrainingConfig.from_dict(config).to_dict()


# ----------------------------------------------------------------------------------- network


def network_divisor(model_cfg: dict | SegmentationNetwork) -> int:
    """Patch sizes must be multiples of this (the network's total downsampling)."""
    return SegmentationNetwork.from_dict(model_cfg, "model").divisor


def build_network(model_cfg: dict | SegmentationNetwork, in_channels: int) -> torch.nn.Module:
    """A MONAI 3D UNet (default) or SegResNet with two output classes (background, tumor)."""
    from monai.networks.nets import SegResNet, UNet

    model = SegmentationNetwork.from_dict(model_cfg, "model")
    channels = list(model.channels)
    if model.name == "unet":
        return UNet(
            spatial_dims=3, in_channels=in_channels, out_channels=2, channels=channels,
            strides=[2] * (len(channels) - 1), num_res_units=model.num_res_units, norm="INSTANCE", dropout=model.dropout,
        )
    return SegResNet(
        spatial_dims=3, in_channels=in_channels, out_channels=2, init_filters=channels[0],
        blocks_down=model.blocks_down or (1, 2, 2, 4), blocks_up=model.blocks_up or (1, 1, 1),
        norm="INSTANCE", dropout_prob=model.dropout or None,
    )


def network_input(images: torch.Tensor, subtraction: bool) -> torch.Tensor:
    """(B, C, ...) phases -> network input: the phases, plus post1 - pre when ``subtraction``."""
    if not subtraction:
        return images
    return torch.cat([images, images[:, 1:2] - images[:, 0:1]], dim=1)


def input_channels(num_phases: int, subtraction: bool) -> int:
    return num_phases + (1 if subtraction else 0)


# -------------------------------------------------------------------------------------- data


@dataclass
class SegmentationCase:
    """One case for training: normalized image (C,Z,Y,X), tumor uint8 (Z,Y,X), its grid and normalization."""

    case_id: str
    image: np.ndarray
    tumor: np.ndarray
    geometry: Geometry
    norm: object  # preprocess.Normalization
    phase_names: list[str]
    body_voxels: np.ndarray  # (N, 3) z, y, x candidates for negative patches
    tumor_voxels: np.ndarray  # (M, 3) candidates for positive patches (may be empty)


SYNTHETIC_FALLBACK = ("{missing} of {total} synthetic cases in {root} have no synthetic-tumor mask (exported, or "
                      "prepared with `synbt prepare`, before SynBT wrote them; export again, or prepare the set into "
                      "a new store): their positive patches are centred on any label voxel, the source case's "
                      "real lesions included")


def _subsample(points: np.ndarray) -> np.ndarray:
    return points[:: max(1, len(points) // MAX_CENTERS)]


def load_segmentation_cases(root: str | Path, what: str = "training", progress: bool = True,
                            policy=None) -> list[SegmentationCase]:
    """Every case of a data set folder (or a `synbt prepare` store, memory-mapped) that has a tumor label,
    normalized; ``policy`` picks the phases. Unusable cases are skipped with one line each and counted.

    ``what="synthetic"`` (an offline `synbt export` set): the positive-patch centres (``tumor_voxels``) are the
    voxels of the case's synthetic-tumor mask (export.synthetic_mask_beside), not of the source's real
    lesions, while ``tumor`` (what the patches' labels are cut from) stays the whole label. A case without
    that mask keeps every label voxel as a centre, and one line says how many such cases there are."""
    from tqdm.auto import tqdm

    from ..datasets import apply_policy
    from ..export import synthetic_mask_beside
    from ..io import read_case, read_dataset, read_mask
    from ..preprocess import Normalization, body_mask, fit_normalization, normalize
    from ..store import is_store, open_store
    from .data import report_skipped

    cases, skipped = [], []
    synthetic, unmasked = what == "synthetic", 0
    if is_store(root):
        _, stored = open_store(root, policy)
        total = len(stored)
        for entry in stored:
            if entry.meta["label_file"] is None:
                skipped.append((entry.case_id, "no tumor label"))
                continue
            tumor = entry.array("tumor")
            centres = entry.array("synthetic_voxels") if synthetic else None
            unmasked += int(synthetic and centres is None)
            centres = entry.array("tumor_voxels") if centres is None else centres
            # validation segments whole cases: a float32 copy in memory; training and synthetic sets crop the memory map
            image = entry.array("image") if what in ("training", "synthetic") else np.asarray(entry.array("image"), np.float32)
            cases.append(SegmentationCase(
                case_id=entry.case_id, image=image, tumor=tumor, geometry=entry.geometry,
                norm=Normalization.from_dict(entry.meta["normalization"]), phase_names=list(entry.meta["phase_names"]),
                body_voxels=np.asarray(entry.array("centers")),
                tumor_voxels=_subsample(np.asarray(centres)),
            ))
    else:
        every = read_dataset(root)
        refs, skipped = apply_policy(every, policy)
        total = len(every)
        skipped += [(ref.case_id, "no tumor label") for ref in refs if ref.label_path is None]
        refs = [ref for ref in refs if ref.label_path is not None]
        for ref in tqdm(refs, desc=f"loading {what} cases", disable=not progress):
            try:
                case = read_case(list(ref.phase_paths))
                tumor = _read_tumor(ref.label_path, case.geometry, read_mask)
                centres = tumor
                mask = synthetic_mask_beside(ref.label_path) if synthetic else None
                if mask and mask.is_file():
                    centres = _read_tumor(mask, case.geometry, read_mask) & tumor
                norm = fit_normalization(case)
            except (SynBTError, OSError, RuntimeError, ValueError) as exc:
                skipped.append((ref.case_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                continue
            cases.append(SegmentationCase(
                case_id=ref.case_id, image=normalize(case.phases, norm), tumor=tumor, geometry=case.geometry,
                norm=norm, phase_names=list(case.phase_names),
                body_voxels=_subsample(np.argwhere(body_mask(case))), tumor_voxels=_subsample(np.argwhere(centres > 0)),
            ))
            unmasked += int(synthetic and centres is tumor)
    report_skipped(skipped, total, root)
    if unmasked:
        log(SYNTHETIC_FALLBACK.format(missing=unmasked, total=len(cases), root=root))
    if not cases:
        raise SynBTError(f"no usable {what} cases with a tumor label (tumor_labels.nii.gz / labelsTr) in {root}")
    phases = {c.image.shape[0] for c in cases}
    if len(phases) > 1:
        raise SynBTError(f"{what} cases in {root} have different numbers of phases {sorted(phases)}; use one protocol")
    return cases


def _read_tumor(path, geometry, read_mask) -> np.ndarray:
    """The tumor label; an all-background label is a valid tumor-free case (read_mask refuses empty masks)."""
    from ..io import read_image

    values, label_geometry = read_image(path)
    if not values.any() and label_geometry.matches(geometry):
        return np.zeros(geometry.shape, np.uint8)
    return (read_mask(path, geometry) > 0).astype(np.uint8)


class TumorPatchSampler:
    """Seeded (image, label) patches: centred on a tumor voxel with probability ``pos_fraction``
    (always when ``positive_only``), else on a random body voxel; random x-flips."""

    def __init__(self, cases, patch_size, seed: int, rank: int = 0, pos_fraction: float = 0.67, flip_x: bool = True):
        self.cases, self.patch_size = list(cases), tuple(int(v) for v in patch_size)
        self.with_tumor = [c for c in self.cases if len(c.tumor_voxels)]
        self.seed, self.rank, self.pos_fraction, self.flip_x = seed, rank, float(pos_fraction), flip_x

    def sample(self, step: int, count: int, stream: int, positive_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        rng = step_rng(self.seed, step, self.rank, stream)
        images, labels = [], []
        for _ in range(count):
            positive = self.with_tumor and (positive_only or rng.random() < self.pos_fraction)
            if positive:
                case = self.with_tumor[rng.integers(len(self.with_tumor))]
                center = case.tumor_voxels[rng.integers(len(case.tumor_voxels))]
            else:
                case = self.cases[rng.integers(len(self.cases))]
                center = case.body_voxels[rng.integers(len(case.body_voxels))]
            start = [int(c) - n // 2 for c, n in zip(center, self.patch_size)]
            image, label = crop(case.image, start, self.patch_size), crop(case.tumor, start, self.patch_size, "constant")
            if self.flip_x and rng.random() < 0.5:
                image, label = image[..., ::-1], label[..., ::-1]
            images.append(image)
            labels.append(label)
        return stack_batch(images, labels, len(self.cases[0].phase_names))


def stack_batch(images: list, labels: list, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists of (C, z, y, x) images and (z, y, x) labels -> contiguous (B, C, ...) float32 and (B, 1, ...) uint8."""
    if not images:
        return np.zeros((0, channels, 1, 1, 1), np.float32), np.zeros((0, 1, 1, 1, 1), np.uint8)
    return (
        np.ascontiguousarray(np.stack(images), dtype=np.float32),
        np.ascontiguousarray(np.stack(labels)[:, None], dtype=np.uint8),
    )


def synthetic_count(seed: int, step: int, rank: int, batch_size: int, ratio: float) -> int:
    """How many samples of this step's batch are synthetic: ratio * batch_size, rounded at random
    (seeded) so that the long-run fraction is exactly ``ratio``."""
    expected = float(ratio) * batch_size
    low = int(np.floor(expected))
    return low + int(step_rng(seed, step, rank, stream=3).random() < expected - low)


def synthetic_positives(seed: int, step: int, rank: int, count: int, pos_fraction: float) -> int:
    """How many of this step's ``count`` synthetic samples are centred on a synthetic tumor (each with
    probability ``pos_fraction``, seeded); the others are background patches."""
    return int((step_rng(seed, step, rank, stream=4).random(count) < pos_fraction).sum())


def synthetic_source(config: SegmentationTrainingConfig, cases, rank: int = 0, loud: bool = False):
    """A callable (step, count, start) -> (images, labels) of a step's synthetic samples, or None without synthesis.

    Synthetic samples are drawn as the real ones are: a share ``synthetic.pos_fraction`` (default
    data.pos_fraction) centred on a tumor, the rest on random body voxels, so that adding synthetic
    cases does not shrink the share of tumor-free patches a batch holds. Offline: from the synthetic
    cases (tumor and body); on the fly: tumors synthesized into the real cases, and background
    patches of those same real cases (what a synthetic case looks like away from its new tumor).
    """
    syn, data, settings = config.synthetic, config.data, config.training
    patch, flip_x = data.patch_size, data.flip_x
    pos_fraction = data.pos_fraction if syn.pos_fraction is None else syn.pos_fraction
    if syn.mode == "none" or syn.ratio == 0:
        return None
    if syn.mode == "offline":
        synthetic_cases = load_segmentation_cases(syn.dir, "synthetic", progress=loud)
        if synthetic_cases[0].image.shape[0] != cases[0].image.shape[0]:
            raise SynBTError(
                f"synthetic cases in {syn.dir} have {synthetic_cases[0].image.shape[0]} phases, the real ones "
                f"{cases[0].image.shape[0]}"
            )
        sampler = TumorPatchSampler(synthetic_cases, patch, settings.seed, rank, pos_fraction, flip_x)
        if not sampler.with_tumor:
            raise SynBTError(f"the synthetic cases in {syn.dir} have no tumor voxels")
        return lambda step, count, start: sampler.sample(step, count, stream=2)
    from ..synthesizers import make_synthesizer
    from .onthefly import OnTheFlyTumors, synthetic_loader

    synth, method, steps = make_synthesizer(syn.method, syn.bundle, syn.steps)
    dataset = OnTheFlyTumors(
        cases, synth, seed=settings.seed, patch_size=patch, size_mm=list(syn.size_mm), rank=rank,
        synthesis_steps=steps, context_mm=syn.context_mm, flip_x=flip_x, kinds=syn.kinds, shape_pool=syn.shape_pool,
    )
    background = TumorPatchSampler(cases, patch, settings.seed, rank, 0.0, flip_x)
    state = {}

    def positives(step: int) -> int:
        count = synthetic_count(settings.seed, step, rank, settings.batch_size, syn.ratio)
        return synthetic_positives(settings.seed, step, rank, count, pos_fraction)

    def draw(step: int, count: int, start: int):
        if "iterator" not in state:  # built lazily, from the first step this process runs (resume-aware)
            keys = [(s, slot) for s in range(start, settings.steps) for slot in range(positives(s))]
            state["iterator"] = iter(synthetic_loader(dataset, keys, syn.workers))
        tumors = min(count, positives(step))
        items = [next(state["iterator"]) for _ in range(tumors)]
        images, labels = stack_batch([i[0] for i in items], [i[1] for i in items], cases[0].image.shape[0])
        if tumors == count:
            return images, labels
        rest = background.sample(step, count - tumors, stream=2)
        return (rest if not tumors else
                (np.concatenate([images, rest[0]]), np.concatenate([labels, rest[1]])))

    return draw


# -------------------------------------------------------------------------------- the model


@dataclass
class SegmentationModel:
    """A trained network and its config (phases, subtraction, patch size, sliding-window settings)."""

    network: torch.nn.Module
    config: dict

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def segment(self, image: np.ndarray) -> np.ndarray:
        """Normalized (C, Z, Y, X) phases -> uint8 (Z, Y, X) tumor mask (sliding window, argmax)."""
        from monai.inferers import sliding_window_inference

        self.network.eval()
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        x = network_input(x, bool(self.config["model"].get("subtraction", False)))
        validation = self.config.get("validation", {})
        logits = sliding_window_inference(
            x, roi_size=list(self.config["data"]["patch_size"]), sw_batch_size=int(validation.get("sw_batch_size", 2)),
            predictor=self.network, overlap=float(validation.get("overlap", 0.25)), mode="gaussian",
        )
        return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()

    def predict(self, case: Case) -> np.ndarray:
        """A case in scanner intensities -> uint8 (Z, Y, X) tumor mask on the case's grid."""
        from ..preprocess import fit_normalization, normalize

        expected = int(self.config["phases"])
        if case.num_phases != expected:
            raise SynBTError(f"the segmentation model expects {expected} phases, the case has {case.num_phases}")
        return self.segment(normalize(case.phases, fit_normalization(case)))


def save_model(model_dir: str | Path, network: torch.nn.Module, config: dict) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``model_dir`` (each replaced atomically)."""
    from ..bundle import save_weights

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / (WEIGHTS_FILE + ".tmp")
    save_weights(network, tmp)
    os.replace(tmp, model_dir / WEIGHTS_FILE)
    tmp = model_dir / (MODEL_CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, model_dir / MODEL_CONFIG_FILE)
    return model_dir


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> SegmentationModel:
    """A trained segmentation model from its folder (weights read with safetensors only)."""
    from ..bundle import load_weights

    model_dir = Path(model_dir)
    if (model_dir / MODEL_DIR / WEIGHTS_FILE).is_file():  # a training run folder was given
        model_dir = model_dir / MODEL_DIR
    if not (model_dir / WEIGHTS_FILE).is_file() or not (model_dir / MODEL_CONFIG_FILE).is_file():
        raise SynBTError(f"no segmentation model in {model_dir} (expected {WEIGHTS_FILE} and {MODEL_CONFIG_FILE})")
    config = json.loads((model_dir / MODEL_CONFIG_FILE).read_text())
    network = build_network(config["model"], int(config["in_channels"]))
    load_weights(network, model_dir / WEIGHTS_FILE, device)
    return SegmentationModel(network.to(device).eval(), config)


def predict_case(model_dir: str | Path | SegmentationModel, case: Case, device: str | torch.device = "cpu") -> np.ndarray:
    """Segment the tumor of ``case`` with a trained model (folder or loaded): uint8 (Z, Y, X) 0/1."""
    model = model_dir if isinstance(model_dir, SegmentationModel) else load_model(model_dir, device)
    return model.predict(case)


# ----------------------------------------------------------------------------------- training


@dataclass
class SegmentationRun:
    """What a training run produced."""

    model_dir: Path | None
    best_dice: float | None
    best_step: int | None
    losses: dict[str, float]
    out: Path


def train_segmentation(
    data: str | Path,
    out: str | Path,
    config: dict | SegmentationTrainingConfig | None = None,
    val: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    command: str = "",
    verbose: bool = True,
    progress=None,
) -> SegmentationRun:
    """Train a segmentation network on the labelled cases under ``data`` (+ synthetic tumors per config).

    ``out`` gets checkpoint.pt, losses.csv (loss, synthetic samples, lr, val_dice), config.json and
    model/ (the best model by validation Dice, or the final one without ``val``). ``progress(done,
    total, message)`` is called after every step and may raise to stop (the checkpoint stays resumable).
    """
    run = SegmentationTraining(data, out, config, resume, device, command, verbose, progress)
    if val is None:  # a resumed run validates on the folder it was started with
        val = run.config.validation.dir
    run.config.validation.dir = str(val) if val else None
    return run.fit()


class SegmentationTraining(TrainingRun):
    """The segmentation trainer's hooks (see common.TrainingRun)."""

    name = "train-seg"
    config_class = SegmentationTrainingConfig

    def load_data(self) -> None:
        from .data import data_phase_policy

        config, data, val = self.config, self.data, self.config.validation.dir
        policy = config.data.phase_policy = data_phase_policy(data, config.data.phase_policy)
        if self.resume:
            self._check_resumable()
        self.cases = cases = load_segmentation_cases(data, "training", progress=self.loud, policy=policy)
        self.val_cases = load_segmentation_cases(val, "validation", progress=self.loud,
                                                 policy=data_phase_policy(val, policy)) if val else []
        phases = int(cases[0].image.shape[0])
        if phases < 2 and config.model.subtraction:
            raise SynBTError("model.subtraction: the subtraction channel needs at least two phases")
        if self.val_cases and self.val_cases[0].image.shape[0] != phases:
            raise SynBTError(f"validation cases have {self.val_cases[0].image.shape[0]} phases, training cases {phases}")
        self.in_channels = input_channels(phases, config.model.subtraction)
        self.model_config = {
            **self.record(), "phases": phases, "phase_names": cases[0].phase_names, "phase_policy": policy,
            "in_channels": self.in_channels,
            "spacing": [float(v) for v in np.median([c.geometry.spacing for c in cases], axis=0)],
            "normalization": "SynBTLib.preprocess.fit_normalization", "data_dir": str(data), "command": self.command,
        }

    def _check_resumable(self) -> None:
        """The model and data sections must be the run's (its config.json, read as today's config)."""
        saved_path = Path(self.out) / "config.json"
        if not saved_path.is_file():
            return
        saved, current = SegmentationTrainingConfig.migrate(json.loads(saved_path.read_text())), self.record()
        for section in ("model", "data"):
            if saved.get(section) != current.get(section):
                raise SynBTError(f"--resume: the {section} config differs from the run's config.json; resume with the "
                                 "same config")

    def build(self):
        self.network = build_network(self.config.model, self.in_channels).to(self.dist.device)
        return {"segmentation": self.network}, {"segmentation": adamw(self.network, self.settings)}

    def log_fields(self) -> list[str]:
        return ["loss", "synthetic", "lr", "val_dice"]

    def on_train_start(self) -> None:
        from monai.losses import DiceCELoss

        config, settings = self.config, self.settings
        self.best = dict(zip(("dice", "step"), _best_from_log(self.out / LOG_FILE) if self.is_main else (None, None)))
        self.real = TumorPatchSampler(self.cases, config.data.patch_size, settings.seed, self.dist.rank,
                                      config.data.pos_fraction, config.data.flip_x)
        self.synthetic = synthetic_source(config, self.cases, self.dist.rank, self.loud)
        self.ratio = config.synthetic.ratio if self.synthetic is not None else 0.0
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.evaluator = SegmentationModel(self.network, self.model_config)

    def train_step(self, index: int) -> dict[str, float]:
        settings, dist, network, synthetic = self.settings, self.dist, self.network, self.synthetic
        count = synthetic_count(settings.seed, index, dist.rank, settings.batch_size, self.ratio) if synthetic else 0
        parts = [self.real.sample(index, settings.batch_size - count, stream=1)]
        if count:
            parts.append(synthetic(index, count, self.trainer.start_step))
        parts = [p for p in parts if len(p[0])]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        x = network_input(torch.from_numpy(images).to(dist.device), self.config.model.subtraction)
        y = torch.from_numpy(labels).to(dist.device)
        with self.trainer.autocast():
            logits = network(x)
        loss = self.loss_fn(logits.float(), y)
        self.trainer.optimize(loss, "segmentation")
        values = {"loss": loss.item(), "synthetic": float(count)}
        done = index + 1
        if self.val_cases and (done % self.config.validation.every == 0 or done == settings.steps):
            values["val_dice"] = _validate(self.evaluator, self.val_cases, dist)
            network.train()
            best = self.best
            if dist.is_main and (best["dice"] is None or values["val_dice"] > best["dice"]):
                best["dice"], best["step"] = values["val_dice"], done
                save_model(self.out / MODEL_DIR, network, {**self.model_config, "best_val_dice": values["val_dice"],
                                                           "step": done})
        return values

    def finish(self, losses: dict[str, float]) -> SegmentationRun:
        model_dir = None
        if self.is_main:
            if not self.val_cases:
                save_model(self.out / MODEL_DIR, self.network, self.model_config)
            model_dir = self.out / MODEL_DIR
        return SegmentationRun(model_dir, self.best["dice"], self.best["step"], losses, self.out)


def _best_from_log(path: Path) -> tuple[float | None, int | None]:
    """The best validation Dice (and its step) in the loss log, as truncated by a resume."""
    if not path.is_file():
        return None, None
    best, best_step = None, None
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("val_dice"):
                value = float(row["val_dice"])
                if best is None or value > best:
                    best, best_step = value, int(row["step"])
    return best, best_step


def _validate(model: SegmentationModel, cases, dist) -> float:
    """Mean Dice over the validation cases; each rank segments its share, the ranks' means add up."""
    from ..metrics import dice

    mine = cases[dist.rank:: dist.world_size]
    total = sum(dice(model.segment(c.image), c.tumor) for c in mine)
    return total * dist.world_size / len(cases)  # Trainer averages over ranks -> the mean over all cases


# --------------------------------------------------------------------------------- nnU-Net v2


def nnunet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nnunetv2") is not None


def train_nnunet(
    data: str | Path, out: str | Path, synthetic_dir: str | Path | None = None, dataset_id: int = 502,
    configuration: str = "3d_fullres", fold: int | str = 0, runner=None,
) -> Path:
    """Train nnU-Net v2 on the real cases (+ an offline synthetic data set) by calling its commands.

    The nnU-Net raw data set (Dataset<id>_SynBTSeg: imagesTr/labelsTr, dataset.json) is made of
    links to the input files under ``out``/nnUNet_raw; nnUNet_preprocessed and nnUNet_results go
    to ``out`` too. ``runner(cmd, env)`` runs a command (default: subprocess.run with check=True).
    """
    import subprocess

    if not nnunet_available():
        raise SynBTError(NNUNET_MISSING)
    from ..export import channel_names
    from ..io import read_dataset

    out = Path(out).resolve()
    refs = [r for r in read_dataset(data) if r.label_path is not None]
    if synthetic_dir:
        refs += [r for r in read_dataset(synthetic_dir) if r.label_path is not None]
    if not refs:
        raise SynBTError(f"no cases with a tumor label in {data}")
    phases = {len(r.phase_paths) for r in refs}
    if len(phases) > 1:
        raise SynBTError(f"cases have different numbers of phases {sorted(phases)}; nnU-Net needs one channel count")
    raw = out / "nnUNet_raw" / f"Dataset{dataset_id:03d}_SynBTSeg"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for k, ref in enumerate(refs):
        name = f"case{k:04d}"
        for c, path in enumerate(ref.phase_paths):
            _link(Path(path), raw / "imagesTr" / f"{name}_{c:04d}.nii.gz")
        _link(Path(ref.label_path), raw / "labelsTr" / f"{name}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names(phases.pop()), "labels": {"background": 0, "tumor": 1},
        "numTraining": len(refs), "file_ending": ".nii.gz", "name": "SynBTSeg",
    }, indent=2))
    env = {**os.environ, "nnUNet_raw": str(out / "nnUNet_raw"), "nnUNet_preprocessed": str(out / "nnUNet_preprocessed"),
           "nnUNet_results": str(out / "nnUNet_results")}
    run = runner or (lambda cmd, env: subprocess.run(cmd, env=env, check=True))
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "--verify_dataset_integrity"], env)
    run(["nnUNetv2_train", str(dataset_id), configuration, str(fold)], env)
    return out / "nnUNet_results"


def _link(source: Path, target: Path) -> None:
    """Symlink (or copy where links are not allowed); nnU-Net wants .nii.gz, so other formats are converted."""
    import shutil

    import SimpleITK as sitk

    if target.exists():
        return
    if not source.name.lower().endswith(".nii.gz"):
        sitk.WriteImage(sitk.ReadImage(str(source)), str(target))
        return
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, target)
