"""Apply a trained tumor segmentation model to DCE-MRI cases (Qt-free: the CLI and the Slicer module).

Two kinds of model folder are recognised by their files, before anything is loaded:

- ``monai``: what `synbt train-seg` writes (its run folder, or the ``model/`` inside it:
  model.safetensors + config.json). Inference is the training's own: per-case normalization
  (preprocess.fit_normalization), the subtraction channel when the model has one, and MONAI's
  sliding-window inference with the patch size and overlap of training.
- ``nnunet``: what `synbt train-seg --engine nnunet` writes (its run folder, or an nnU-Net v2
  trained-model folder holding plans.json, dataset.json and fold_K/). Run by nnU-Net v2's own
  predictor, which does its own preprocessing; refused with a clear message when nnunetv2 is not
  installed.

The mask is uint8 (Z, Y, X) on the case's grid, 1 = tumor (labels.TUMOR_LABEL).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .case import Case
from .errors import SynBTError

MONAI_WEIGHTS, MONAI_CONFIG, RUN_MODEL_DIR = "model.safetensors", "config.json", "model"
NNUNET_MISSING = "this is an nnU-Net v2 model, but nnunetv2 is not installed: pip install 'synbt[nnunet]'"


@dataclass(frozen=True)
class ModelRef:
    """A segmentation model folder found on disk: its engine ("monai" or "nnunet") and its folder."""

    engine: str
    path: Path


def find_model(model_dir) -> ModelRef:
    """The model in ``model_dir`` (a train-seg run folder or a model folder), from its files alone."""
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise SynBTError(f"model folder not found: {root}")
    for folder in (root, root / RUN_MODEL_DIR):
        if (folder / MONAI_WEIGHTS).is_file() and (folder / MONAI_CONFIG).is_file():
            return ModelRef("monai", folder)
    trained = sorted(p.parent for p in [root / "plans.json", *root.glob("nnUNet_results/*/*/plans.json")]
                     if p.is_file() and (p.parent / "dataset.json").is_file())
    if len(trained) > 1:
        raise SynBTError(f"{root} holds {len(trained)} nnU-Net models ({', '.join(p.name for p in trained)}); "
                         "pass one of their folders")
    if trained:
        if not any(trained[0].glob("fold_*/checkpoint_*.pth")):
            raise SynBTError(f"nnU-Net model {trained[0]} has no trained fold (fold_K/checkpoint_final.pth)")
        return ModelRef("nnunet", trained[0])
    raise SynBTError(
        f"no segmentation model in {root}: expected a `synbt train-seg` run folder, its {RUN_MODEL_DIR}/ "
        f"({MONAI_WEIGHTS} + {MONAI_CONFIG}), or an nnU-Net v2 model folder (plans.json, dataset.json, fold_K/)"
    )


def nnunet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nnunetv2") is not None


class NnUNetSegmenter:
    """An nnU-Net v2 trained model run by nnU-Net's predictor (all folds found, final checkpoints)."""

    def __init__(self, path: Path, device: str = "cpu"):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        folds = tuple(sorted(p.name.split("_", 1)[1] for p in path.glob("fold_*") if p.is_dir()))
        names = {p.name for p in path.glob("fold_*/checkpoint_*.pth")}
        checkpoint = "checkpoint_final.pth" if "checkpoint_final.pth" in names else "checkpoint_best.pth"
        self.predictor = nnUNetPredictor(device=torch.device(device), verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(
            str(path), use_folds=tuple(int(f) if f.isdigit() else f for f in folds), checkpoint_name=checkpoint)
        self.phases = len(self.predictor.dataset_json.get("channel_names", {})) or None

    def __call__(self, case: Case) -> np.ndarray:
        if self.phases is not None and case.num_phases != self.phases:
            raise SynBTError(f"the nnU-Net model expects {self.phases} phases, the case has {case.num_phases}")
        g = case.geometry
        # the properties nnU-Net's SimpleITK reader gives: spacing in array (z, y, x) order for nnU-Net
        properties = {"sitk_stuff": {"spacing": tuple(g.spacing), "origin": tuple(g.origin),
                                     "direction": tuple(np.asarray(g.direction, float).ravel())},
                      "spacing": list(g.spacing[::-1])}
        mask = self.predictor.predict_single_npy_array(case.phases.astype(np.float32), properties, None, None, False)
        return (np.asarray(mask) > 0).astype(np.uint8)


def load_segmenter(model_dir, device: str = "cpu") -> Callable[[Case], np.ndarray]:
    """A callable case -> uint8 (Z, Y, X) tumor mask, for the model in ``model_dir`` (loaded once)."""
    ref = find_model(model_dir)
    if ref.engine == "nnunet":
        if not nnunet_available():
            raise SynBTError(NNUNET_MISSING)
        return NnUNetSegmenter(ref.path, device)
    from .training.segmentation import load_model

    return load_model(ref.path, device).predict


def segment_case(model, case: Case, device: str = "cpu") -> np.ndarray:
    """Segment the tumor of ``case``: uint8 (Z, Y, X), 1 = tumor, on the case's grid.

    ``model``: a model folder (loaded for this call) or what load_segmenter returned (reused).
    """
    segmenter = model if callable(model) else load_segmenter(model, device)
    mask = np.asarray(segmenter(case), dtype=np.uint8)
    if mask.shape != case.shape:
        raise SynBTError(f"the model returned a mask of shape {mask.shape} for a case of shape {case.shape}")
    return mask
