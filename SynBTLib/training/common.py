"""Shared training machinery: the run skeleton (TrainingRun, whose hooks each trainer fills), seeding,
distributed setup, mixed precision, checkpoints, the loss log and the loop (Trainer).

Resuming is exact: a checkpoint holds the networks, optimizers, LR schedulers, the step and every
RNG state, and each step draws its data and noise from generators seeded by (seed, step, rank)
only, so "3 steps, stop, resume to 6" gives the same weights as 6 uninterrupted steps.
Checkpoints are written with torch.save and read only with torch.load(weights_only=True).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bundle import load_bundle
from ..errors import SynBTError
from .config import TrainingConfig, TrainSettings, config_dict

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "losses.csv"


def load_config(path: str | Path) -> dict:
    """Read a JSON training config; SynBTError naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SynBTError(f"config file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise SynBTError(f"config file {path} is not valid JSON ({exc})") from None


def apply_overrides(config: dict, args) -> dict:
    """Copy of ``config`` with the command-line flags that were given (--steps, --batch-size, --lr, --seed)."""
    config = json.loads(json.dumps(config))
    training = config.setdefault("training", {})
    for key in ("steps", "batch_size", "lr", "seed", "checkpoint_every"):
        value = getattr(args, key, None)
        if value is not None:
            training[key] = value
    return config


def seed_everything(seed: int) -> None:
    """Seed python, numpy's global state and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_rng(seed: int, step: int, rank: int = 0, stream: int = 0) -> np.random.Generator:
    """A numpy Generator that depends only on (seed, step, rank, stream): resumable data sampling."""
    return np.random.default_rng([seed, step, rank, stream])


def step_torch_generator(seed: int, step: int, rank: int = 0, stream: int = 0, device="cpu") -> torch.Generator:
    """A torch Generator seeded from (seed, step, rank, stream), for noise drawn during a step."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(step_rng(seed, step, rank, stream).integers(2**62)))
    return generator


# ---------------------------------------------------------------- distributed


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) run; only the main rank writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Make every rank start from rank 0's weights and buffers."""
        if self.enabled:
            for tensor in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """All-reduce the gradients (one flat buffer) so every rank takes the same optimizer step.

        Done by hand rather than with DistributedDataParallel so that losses may call the network
        outside its forward (e.g. the patch/volume consistency term) without breaking gradient sync.
        """
        if not self.enabled:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar values over ranks (for logging)."""
        if not self.enabled or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world_size).tolist()))


def setup_distributed(device: str | None = None) -> Distributed:
    """Join the process group when torchrun set RANK/WORLD_SIZE (nccl on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise SynBTError(f"device {device} was asked for but no CUDA GPU is available")
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for this device and setting: bf16/fp16 on a GPU, None (full precision) on CPU."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


# ---------------------------------------------------------------- checkpoints


def _rng_states() -> dict[str, Any]:
    legacy = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # JSON strings keep the checkpoint loadable with torch.load(weights_only=True)
        "numpy": json.dumps([legacy[0], legacy[1].tolist(), *legacy[2:]]),
        "python": json.dumps(random.getstate()),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = json.loads(states["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(states["python"])
    random.setstate((version, tuple(internal), gauss))


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class Checkpoint:
    """Everything a run needs to continue exactly: networks, optimizers, LR schedulers, AMP scaler,
    numpy Generators, the step and the global RNG states, plus the run's config (as JSON)."""

    def __init__(
        self,
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any] | None = None,
        scaler: Any | None = None,
        generators: dict[str, np.random.Generator] | None = None,
    ):
        self.models, self.optimizers = models, optimizers
        self.schedulers, self.scaler, self.generators = schedulers or {}, scaler, generators or {}

    def state_dict(self, step: int, config: dict) -> dict[str, Any]:
        return {
            "step": int(step),
            "config": json.dumps(config, sort_keys=True),
            "models": {k: _unwrap(m).state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "generators": {k: json.dumps(g.bit_generator.state) for k, g in self.generators.items()},
            "rng": _rng_states(),
        }

    def save(self, path: str | Path, step: int, config: dict) -> Path:
        """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(step, config), tmp)
        os.replace(tmp, path)
        return path

    def load(self, path: str | Path, map_location="cpu") -> tuple[int, dict]:
        """Restore every state from ``path``; returns (completed steps, the run's config)."""
        state = read_checkpoint(path, map_location)
        for key, model in self.models.items():
            _unwrap(model).load_state_dict(state["models"][key])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        for key, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][key])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for key, generator in self.generators.items():
            generator.bit_generator.state = json.loads(state["generators"][key])
        _set_rng_states(state["rng"])
        return int(state["step"]), json.loads(state["config"])


def read_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """A checkpoint dict, read without unpickling arbitrary objects (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise SynBTError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise SynBTError(f"cannot read checkpoint {path} ({str(exc).splitlines()[0]})") from None


# ---------------------------------------------------------------- loss log


class LossLog:
    """CSV of per-step losses. On resume, rows past the checkpoint's step are dropped before appending,
    so the file holds exactly one row per completed step."""

    def __init__(self, path: str | Path, fields: list[str], resume_step: int | None = None, enabled: bool = True):
        self.path, self.fields, self.enabled = Path(path), ["step", *fields], enabled
        if not enabled:
            return
        rows = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as handle:
            row = {"step": step, **{k: f"{v:.6g}" for k, v in values.items()}}
            csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore").writerow(row)


# ---------------------------------------------------------------- the loop


def warmup_cosine(settings: TrainSettings) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to ``min_lr_ratio`` at the last step."""

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        span = max(settings.steps - settings.warmup_steps, 1)
        progress = min((step - settings.warmup_steps) / span, 1.0)
        return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


RESUMABLE_CHANGES = ("training.steps", "training.epochs", "training.checkpoint_every", "training.compile")


def config_differences(saved: dict, current: dict, ignore=(), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs (keys in `ignore` skipped)."""
    differing = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differing += config_differences(a, b, ignore, f"{name}.")
        elif json.loads(json.dumps(a)) != json.loads(json.dumps(b)):  # tuples vs lists compare equal
            differing.append(name)
    return differing


def finetune_bundle(finetune, config: dict, sections: dict[str, tuple[str, ...]]):
    """The bundle named by ``finetune.bundle``, loaded and verified, or None without a finetune section.

    Refuses any key of the config ``sections`` (name -> keys to ignore) that differs from the
    bundle's: a run that continues a network keeps its architecture.
    """
    if finetune is None:
        return None
    source = load_bundle(finetune.bundle)
    for section, ignored in sections.items():
        theirs = source.config.get(section) or {}
        given = {k: v for k, v in (config.get(section) or {}).items() if k not in ignored}
        differing = sorted(k for k, v in given.items() if theirs.get(k) != v)
        if differing:
            raise SynBTError(f"the {section} section sets {', '.join(differing)} unlike the finetune bundle "
                             f"{finetune.bundle}; leave it out to keep the bundle's")
    return source


def prepare_run_dir(out: str | Path, resume: bool, dist: Distributed, data: str | Path | None = None) -> Path:
    """The run folder: must be new (or empty) for a fresh run, and hold a checkpoint for --resume;
    never a file, and never inside the data set folder `data` (the run must not write into it).

    Every rank checks before any rank writes (barrier), so a fast rank 0 cannot fail the others.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynBTError(f"--out {out} is a file, not a folder")
    if data is not None:
        resolved, data_dir = out.resolve(), Path(data).resolve()
        if resolved == data_dir or data_dir in resolved.parents:
            raise SynBTError(f"--out {out} is inside the data set folder {data}; choose a folder outside it")
    if resume:
        if not (out / CHECKPOINT_FILE).is_file():
            raise SynBTError(f"--resume: no {CHECKPOINT_FILE} in {out}")
    elif out.exists() and any(out.iterdir()):
        raise SynBTError(f"output folder {out} is not empty; pass --resume to continue its run or choose another --out")
    dist.barrier()
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out


class Trainer:
    """Runs ``step_fn(step) -> {loss name: value}`` for the configured steps with resume, AMP,
    gradient clipping, LR schedules, periodic atomic checkpoints, a CSV log and a tqdm bar.

    ``step_fn`` computes its losses inside ``trainer.autocast()`` and updates with
    ``trainer.optimize(loss, name)`` (one call per optimizer). On resume, the checkpoint's config
    (read through ``migrate``, e.g. a typed config's) must equal ``config`` but for RESUMABLE_CHANGES.
    """

    def __init__(
        self,
        settings: TrainSettings,
        dist: Distributed,
        out: Path,
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        log_fields: list[str],
        config: dict,
        resume: bool = False,
        description: str = "training",
        verbose: bool = True,
        migrate: Callable[[dict], dict] | None = None,
    ):
        self.settings, self.dist, self.out, self.config = settings, dist, Path(out), config
        self.models, self.optimizers, self.description = models, optimizers, description
        self.verbose = verbose and dist.is_main
        for model in models.values():
            dist.broadcast_parameters(model)
        self.amp_dtype = autocast_dtype(dist.device, settings.amp)
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
        self.schedulers = {
            k: torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine(settings)) for k, o in optimizers.items()
        }
        self.checkpoint = Checkpoint(models, optimizers, self.schedulers, self.scaler)
        self.start_step = 0
        if resume:
            self.start_step, saved = self.checkpoint.load(self.out / CHECKPOINT_FILE)
            if migrate is not None:
                saved = migrate(saved)
            differing = config_differences(saved, config, ignore=RESUMABLE_CHANGES)
            if differing:
                raise SynBTError(
                    f"--resume: {', '.join(differing[:4])} differ from the checkpoint's run; resume with the same "
                    "settings (only the number of steps or epochs and the checkpoint interval may change)"
                )
        self.log = LossLog(self.out / LOG_FILE, log_fields, self.start_step if resume else None, dist.is_main)
        self.last: dict[str, float] = {}

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.amp_dtype)

    def optimize(self, loss: torch.Tensor, name: str) -> None:
        """Backward, (unscale,) clip, optimizer step for the optimizer ``name``."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.dist.average_gradients(params)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def save(self, completed: int) -> None:
        if self.dist.is_main:
            self.checkpoint.save(self.out / CHECKPOINT_FILE, completed, self.config)
        self.dist.barrier()

    def run(self, step_fn: Callable[[int], dict[str, float]], progress=None) -> dict[str, float]:
        """Train from the start (or resumed) step to ``settings.steps``; returns the last step's losses.

        ``progress(done, total, message)`` is called after each step and may raise to stop.
        """
        from tqdm.auto import tqdm

        total = self.settings.steps
        for model in self.models.values():
            model.train()
        bar = tqdm(total=total, initial=self.start_step, desc=self.description, disable=not self.verbose)
        try:
            for step in range(self.start_step, total):
                values = self.dist.mean(step_fn(step))
                for scheduler in self.schedulers.values():
                    scheduler.step()
                values["lr"] = self.schedulers[next(iter(self.schedulers))].get_last_lr()[0]
                self.log.write(step + 1, values)
                self.last = values
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k != "lr"})
                done = step + 1
                if done % self.settings.checkpoint_every == 0 or done == total:
                    self.save(done)
                if progress is not None:
                    progress(done, total, self.description)
        finally:
            bar.close()
        return self.last


class TrainingRun:
    """One training run in nnU-Net's trainer pattern: ``fit()`` runs the fixed stages below and a
    trainer (autoencoder, diffusion, segmentation) is a subclass that fills in the hooks.

    1. ``check()``: refusals that need neither a device nor a file (a bad run changes nothing)
    2. ``before_run_dir()``: refusals that need the device (e.g. loading a frozen network)
    3. the run folder is made (``prepare_run_dir``); ``load_data()`` reads the cases
    4. every RNG is seeded with training.seed; ``build()`` returns the networks and their optimizers
    5. a ``Trainer`` takes them (checking a resume), then config.json is written and
       ``on_train_start()`` prepares the samplers
    6. ``train_step(index)`` runs for each step; ``finish(losses)`` writes the results and returns them

    ``self.config`` is the trainer's typed config (config.py); its dict form is what the checkpoint,
    config.json and the bundle record.
    """

    name = "training"  # the command; labels the progress bar
    config_class: type[TrainingConfig] = TrainingConfig

    def __init__(self, data, out, config=None, resume: bool = False, device: str | None = None, command: str = "",
                 verbose: bool = True, progress=None):
        self.config = self.config_class.from_dict(config)
        self.settings = self.config.training
        self.data, self.out, self.resume, self.device = data, out, resume, device
        self.command, self.verbose, self.progress = command, verbose, progress
        self.dist: Distributed | None = None
        self.trainer: Trainer | None = None

    # -- hooks
    def check(self) -> None:
        """Refuse what can be refused before anything is loaded or written."""

    def before_run_dir(self) -> None:
        """Checks and loading that need the device but write nothing."""

    def load_data(self) -> None:
        """Read the training cases (the run folder exists now)."""

    def build(self) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        """The networks and their optimizers (after seeding)."""
        raise NotImplementedError

    def log_fields(self) -> list[str]:
        return ["loss"]

    def on_train_start(self) -> None:
        """Set up what the steps use (samplers, losses); ``self.trainer`` exists."""

    def train_step(self, index: int) -> dict[str, float]:
        raise NotImplementedError

    def finish(self, losses: dict[str, float]):
        """Write the results of the finished run (main rank) and return what the caller gets."""
        return losses

    # -- the fixed flow
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def loud(self) -> bool:
        """Whether this process prints progress (verbose, main rank)."""
        return self.verbose and self.dist.is_main

    def record(self) -> dict:
        """The config as recorded (checkpoint, config.json, bundle)."""
        return config_dict(self.config)

    def fit(self):
        self.check()
        self.dist = setup_distributed(self.device)
        try:
            self.before_run_dir()
            self.out = prepare_run_dir(self.out, self.resume, self.dist, data=self.data)
            self.load_data()
            seed_everything(self.settings.seed)
            models, optimizers = self.build()
            self.trainer = Trainer(self.settings, self.dist, self.out, models, optimizers, self.log_fields(),
                                   self.record(), self.resume, self.name, self.verbose,
                                   migrate=self.config_class.migrate)
            if self.dist.is_main:  # after the Trainer accepted a resume, so a refused one changes nothing
                (self.out / "config.json").write_text(json.dumps(self.record(), indent=2) + "\n")
            if self.settings.compile:
                # compiles each module's __call__ (or its parts') in place: parameters, state_dict keys and
                # checkpoints stay those of the plain module (torch.compile(module) would prefix them with _orig_mod)
                for model in models.values():
                    model.compile_parts() if hasattr(model, "compile_parts") else model.compile(dynamic=False)
            self.on_train_start()
            losses = self.trainer.run(self.train_step, self.progress)
            result = self.finish(losses)
            self.dist.barrier()
            return result
        finally:
            teardown_distributed()


def adamw(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with the run's learning rate and weight decay."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)


# ---------------------------------------------------------------- command line


TRAINING_FLAGS = (
    ("--config", "config"), ("--steps", "steps"), ("--batch-size", "batch_size"), ("--lr", "lr"),
    ("--seed", "seed"), ("--checkpoint-every", "checkpoint_every"), ("--device", "device"),
)


def config_from_args(args) -> dict:
    """The config file (or {}) with the command-line overrides applied."""
    return apply_overrides(load_config(args.config) if args.config else {}, args)


def command_line(name: str, args, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """The `synbt ...` command that reproduces this run (for the model card)."""
    import shlex

    parts = ["synbt", name]
    for flag, attr in (("--data", "data"), *extra, ("--out", "out"), *TRAINING_FLAGS):
        value = getattr(args, attr, None)
        if value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts + (["--resume"] if getattr(args, "resume", False) else []))
