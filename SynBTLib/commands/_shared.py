"""What several commands share: the trainers' flags, the --seed help, the early --out check.

Nothing here imports torch: `synbt --help` builds every command's parser from these.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SynBTError


def seed_help(what: str) -> str:
    return f"seed of {what}: the same inputs, seed and model give the same result (default 0)"


def add_training_arguments(parser, writes: str, steps: int) -> None:
    """The flags the trainers share; the given ones override keys of the --config file.

    ``writes``: what the run folder gets besides checkpoint.pt, losses.csv and config.json;
    ``steps``: the trainer's built-in number of steps (its DEFAULT_CONFIG's).
    """
    parser.add_argument("--data", required=True, metavar="DIR", help="data set folder (case folders, nnU-Net raw or MAMA-MIA)")
    parser.add_argument("--out", required=True, metavar="DIR", help=f"run folder: checkpoint.pt, losses.csv, config.json, {writes}")
    parser.add_argument("--config", metavar="FILE", help="JSON config (see configs/); defaults are built in")
    parser.add_argument("--steps", type=int, metavar="N",
                        help=f"total optimizer steps (default: the --config file's, else {steps})")
    parser.add_argument("--batch-size", type=int, help="batch size per process")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed of the weights, the data sampling and the noise (default 0)")
    parser.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints")
    parser.add_argument("--device", help="cpu or cuda (default: cuda:LOCAL_RANK when a GPU is present)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


def check_output(out, overwrite: bool = False, inputs=()) -> Path:
    """Refuse a bad --out before any model is loaded or any work done; creates nothing.

    The rules of io.prepare_output_dir (which creates the folder when the results are written),
    worded with the command's options.
    """
    from ..io import prepare_output_dir

    path = Path(out).expanduser().resolve()
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SynBTError(f"output folder {path} exists and is not empty; add --overwrite to write into it, "
                         "or choose another --out")
    if path.exists():  # an existing folder is only checked against the inputs
        return prepare_output_dir(path, overwrite=True, inputs=inputs)
    for item in inputs:  # a new folder can only clash by lying inside an input folder
        source = Path(item).expanduser().resolve()
        if source.is_dir() and source in path.parents:
            raise SynBTError(f"output folder {path} is inside the input folder {source}; choose another --out")
    return path


def add_device_arguments(parser) -> None:
    """--device and --precision of the commands that run a bundle's networks."""
    parser.add_argument("--device", default="auto", metavar="D",
                        help="where the networks run: auto (default: cuda when a GPU is available, else cpu), cpu, "
                        "cuda or cuda:N")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: the networks run under bf16 autocast (faster on a GPU; results differ "
                        "slightly from float32, the default)")


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system (this process only).

    Every denoising step allocates the networks' activations afresh; blocks over glibc's mmap
    threshold (32 MB at most) are mapped and unmapped each time, and every page is faulted in again
    (4.0 M minor faults in a 5-step 40 mm run, 16-45 % of the CPU time in the kernel). Served from the
    heap and not trimmed, the same pages are reused: a 40 mm run took 39.5 s instead of 60.6 s
    (issue 31, the same settings given through MALLOC_MMAP_MAX_/MALLOC_TRIM_THRESHOLD_), for
    about 0.45 GB more peak memory. False where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))
