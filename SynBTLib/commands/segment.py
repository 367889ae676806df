"""`synbt segment`: apply a trained tumor segmentation model to one case or a data set."""
from __future__ import annotations

from pathlib import Path

from ..errors import SynBTError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment tumors with a model trained by `synbt train-seg`; writes label files for `synbt evaluate`",
        description="Writes one label image per case, <case id>.nii.gz (0 background, 1 tumor, on the case's grid), "
        "into --out: the --pred folder of `synbt evaluate`. The model is a `synbt train-seg` run folder or its "
        "model/ folder (MONAI sliding-window inference, with the training's normalization), or an nnU-Net v2 model "
        "from `train-seg --engine nnunet` (needs nnunetv2 installed). Input files are never modified.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="train-seg run folder, its model/, or an nnU-Net model")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--phases", nargs="+", metavar="P",
                        help="one case: phase files, pre-contrast first (or one case folder / one 4D NIfTI)")
    source.add_argument("--data", metavar="DIR", help="a data set: case folders, nnU-Net raw or MAMA-MIA")
    p.add_argument("--name", metavar="ID", help="with --phases: the case id, i.e. the output file name "
                   "(default: the case folder's name)")
    p.add_argument("--resample", action="store_true", help="resample the phases onto the first phase's grid")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty --out folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder of <case id>.nii.gz label files")
    p.set_defaults(func=run)


def case_id_of(phases: list[str]) -> str:
    """The case id of --phases: a case folder's name, a 4D file's name, or the phase files' folder name."""
    from ..datasets import strip_image_extension

    first = Path(phases[0]).expanduser().resolve()
    if len(phases) == 1:
        return first.name if first.is_dir() else strip_image_extension(first.name)
    return first.parent.name


def _cases(args) -> list[tuple[str, list]]:
    """(case id, phase paths) of every case to segment; only file names are looked at."""
    if args.data:
        if args.name:
            raise SynBTError("--name applies to --phases (one case), not to --data")
        from ..datasets import read_dataset

        return [(ref.case_id, list(ref.phase_paths)) for ref in read_dataset(args.data)]
    return [(args.name or case_id_of(args.phases), list(args.phases))]


def run(args) -> int:
    from ..segment import find_model
    from ._shared import check_output

    # everything that can be refused is refused before the model is loaded
    model = find_model(args.model)
    cases = _cases(args)
    inputs = [args.data] if args.data else list(args.phases)
    check_output(args.out, args.overwrite, inputs + [args.model])

    import numpy as np
    from tqdm import tqdm

    from ..io import prepare_output_dir, read_case, write_label
    from ..segment import load_segmenter, segment_case

    segmenter = load_segmenter(model.path, args.device)
    out = prepare_output_dir(args.out, overwrite=args.overwrite, inputs=inputs + [args.model])
    for case_id, phases in tqdm(cases, desc="segment", unit="case", disable=None):
        case = read_case(phases[0] if len(phases) == 1 else phases, resample=args.resample)
        mask = segment_case(segmenter, case)
        write_label(mask, case.geometry, out / f"{case_id}.nii.gz")
        volume_ml = float(mask.sum()) * float(np.prod(case.geometry.spacing)) / 1000.0
        print(f"{case_id}: {int(mask.sum())} tumor voxels ({volume_ml:.2f} ml)")
    print(f"synbt segment: {len(cases)} label file(s) ({model.engine} model {model.path}) written to {out}")
    return 0
