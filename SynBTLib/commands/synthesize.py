"""`synbt synthesize`: put a synthetic tumor into a DCE-MRI case, from a mask or placed automatically."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import SynBTError
from ..labels import EXISTING_TUMOR_LABEL
from ..stages import stage
from ..synthesizers import DEFAULT_STEPS, METHODS, check_request
from ._shared import add_device_arguments, check_output, keep_freed_memory, seed_help


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="synthesize a tumor into DCE-MRI phases, inside a given mask or at an automatic place",
        description="Writes phase_<k> (in the input phases' own file type and voxel type: .nii.gz, .nii, .nrrd or "
        ".mha; DICOM gives .nii.gz), tumor_labels.nii.gz (1: the new tumor, 2: tumors the case already "
        "had), preview.png and provenance.json into --out. Input files are never modified.",
    )
    p.add_argument("--phases", nargs="+", required=True, metavar="P",
                   help="phase files, pre-contrast first (or one case folder / one 4D NIfTI)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", metavar="M", help="tumor mask: a label image or a Slicer .seg.nrrd")
    where.add_argument("--auto", action="store_true", help="place a tumor inside the breast tissue automatically")
    p.add_argument("--segment", metavar="NAME", help="segment of a .seg.nrrd mask to use")
    p.add_argument("--label", type=int, metavar="V", help="use the voxels equal to V of a label-image mask")
    p.add_argument("--size-mm", type=float, metavar="D", help="with --auto: tumor diameter in mm")
    p.add_argument("--center", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="with --auto: tumor centre in LPS mm (default: drawn by the seed)")
    p.add_argument("--method", choices=METHODS, default="diffusion",
                   help="diffusion (default, with --bundle or the shipped phantom bundle) or the handcrafted baseline")
    p.add_argument("--bundle", metavar="B", help="model bundle folder (default: the shipped phantom bundle)")
    p.add_argument("--seed", type=int, default=0, help=seed_help("the placement (--auto) and the synthesis"))
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps of the diffusion method (default {DEFAULT_STEPS}; the handcrafted method has none)")
    p.add_argument("--kinetics", choices=("persistent", "plateau", "washout", "any"),
                   help="the tumor's kinetic curve type, for bundles trained with kinetic classes (default: "
                   "drawn by the seed from the types the bundle was trained on; any: the model's own choice, "
                   "which is what bundles without kinetic classes always do)")
    p.add_argument("--necrosis", choices=("yes", "no"),
                   help="whether the tumor gets a non-enhancing necrotic core (the deepest part of the mask), for "
                   "bundles trained with necrotic cores (default: drawn by the seed, as often as the bundle's "
                   "training tumors at least as large as its smallest necrotic one had a core)")
    p.add_argument("--existing-tumors", metavar="L",
                   help="label image of the tumors the case already has: --auto keeps 5 mm away from them and the "
                   "output label keeps them as value 2 (default: tumor_labels.nii.gz of a --phases case folder; "
                   "none: ignore them)")
    p.add_argument("--clinical-times", metavar="CSV",
                   help="acquisition times per case (a CSV table with patient_id and acquisition_times columns, as "
                   "MAMA-MIA's clinical table), for a case with more phases than the bundle models whose phase policy "
                   "picks phases by time (closest:<s>s); the case id is its folder's name or the phase files' <id>_000K")
    p.add_argument("--resample", action="store_true", help="resample phases and mask onto the first phase's grid")
    p.add_argument("--resample-mask", action="store_true", help="resample only the mask onto the case grid")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty --out folder")
    p.add_argument("--progress", choices=("tqdm", "json"), default="tqdm",
                   help="json: one JSON line per progress update on stdout (for the Slicer module)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_device_arguments(p)
    p.set_defaults(func=run)


def make_synthesizer(method: str, args):
    """(synthesizer, steps) for the --method and --bundle options."""
    from ..synthesizers import make_synthesizer as by_name

    from ..pipeline import resolve_device

    options = {}
    if method != "handcrafted":
        options = {"device": resolve_device(getattr(args, "device", None)),
                   "precision": getattr(args, "precision", "float32")}
    synthesizer, _, steps = by_name(method, bundle=args.bundle, steps=args.steps, **options)
    return synthesizer, steps


class Progress:
    """Overall progress 0..100: a tqdm bar, or JSON lines on stdout."""

    TOTAL = 100

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None
        if mode == "tqdm":
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal, so errors stay one line
            self.bar = tqdm(total=self.TOTAL, desc="synthesize", unit="%", leave=False, disable=None)

    def __call__(self, done: int, message: str) -> None:
        done = int(min(max(done, 0), self.TOTAL))
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(message)
            self.bar.refresh()
        else:
            print(json.dumps({"event": "progress", "done": done, "total": self.TOTAL, "message": message}), flush=True)

    def within(self, start: int, stop: int):
        """A synthesizer progress callback (done, total, message) mapped onto [start, stop]."""

        def report(done: int, total: int, message: str = "") -> None:
            self(start + (stop - start) * done // max(total, 1), message)

        return report

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_options(args) -> None:
    if args.auto:
        if args.size_mm is None:
            raise SynBTError("--auto needs --size-mm D (the tumor diameter in mm)")
        if args.segment is not None or args.label is not None:
            raise SynBTError("--segment and --label apply to --mask, not to --auto")
    elif args.size_mm is not None or args.center is not None:
        raise SynBTError("--size-mm and --center apply to --auto, not to --mask")
    if args.seed < 0:
        raise SynBTError(f"--seed must be a non-negative integer, got {args.seed}")


def _existing_tumors_path(args) -> Path | None:
    """The label file of the tumors the case already has: --existing-tumors, or a case folder's own label."""
    from ..datasets import TUMOR_LABEL_FILE

    if args.existing_tumors is not None:
        return None if args.existing_tumors == "none" else Path(args.existing_tumors)
    folder = Path(args.phases[0])
    if len(args.phases) == 1 and folder.is_dir() and (folder / TUMOR_LABEL_FILE).is_file():
        return folder / TUMOR_LABEL_FILE
    return None


def _check_inputs(inputs) -> None:
    missing = [str(path) for path in inputs if not Path(path).exists()]
    if missing:
        raise SynBTError(f"input not found: {', '.join(missing)}")


def _tumor_mask(args, case, existing=None):
    """The mask (uint8 Z,Y,X) and details for provenance; --auto keeps away from the existing tumors."""
    if args.mask:
        from ..preprocess import check_mask_in_body
        from ..io import read_mask

        mask = read_mask(args.mask, case.geometry, segment=args.segment,
                         resample=args.resample or args.resample_mask, label=args.label)
        check_mask_in_body(case, mask, f"mask {args.mask}")
        return mask, {"mask": {"path": str(Path(args.mask).resolve()), "segment": args.segment, "label": args.label}}
    from ..shapes import place_in_breast

    placement = place_in_breast(case, args.size_mm, seed=args.seed, center_mm=args.center, existing=existing)
    details = {"size_mm": args.size_mm, "center_mm": [float(v) for v in placement.center_mm], "kind": "lobulated"}
    return placement.mask, {"auto_placement": details}


def _phase_selector(args):
    """(select, chosen) for read_case: the bundle's phase policy applied to the case's phases
    (phase_choice.choose_phases); chosen[0] is the PhaseChoice once the case is read. (None, None)
    for the handcrafted method, which takes any number of phases."""
    from ..phase_choice import BundlePhases, case_id_of, choose_phases, read_times_table, times_for

    if args.method != "diffusion":
        if args.clinical_times:
            raise SynBTError("--clinical-times applies to the diffusion method (a bundle's phase policy)")
        return None, None
    from ..bundle import default_bundle_path

    bundle = BundlePhases.of_bundle(Path(args.bundle) if args.bundle else default_bundle_path())
    case_id = case_id_of(args.phases[0] if len(args.phases) == 1 else args.phases)
    times = None
    if args.clinical_times:
        times = times_for(read_times_table(args.clinical_times), case_id, args.clinical_times)
    chosen = []

    def select(names):
        chosen.append(choose_phases(len(names), bundle, times, args.clinical_times, what=f"case {case_id}"))
        return chosen[0].indices

    return select, chosen


def run(args) -> int:
    from ..io import read_case
    from ..synthesis_outputs import OutputFolder, write_synthesis_outputs

    _check_options(args)
    keep_freed_memory()
    existing_path = _existing_tumors_path(args)
    inputs = list(args.phases) + ([args.mask] if args.mask else []) + ([existing_path] if existing_path else [])
    inputs += [args.clinical_times] if args.clinical_times else []  # it can choose the phases: in provenance
    _check_inputs(inputs)
    check_output(args.out, args.overwrite, inputs)  # refused before any model is loaded
    with stage("load"):
        synthesizer, steps = make_synthesizer(args.method, args)
    # refused before anything is read or written
    necrosis = check_request(args.method, steps, args.kinetics, args.necrosis, args.bundle, synthesizer=synthesizer).necrosis
    select, chosen = _phase_selector(args)
    progress = Progress(args.progress)
    try:
        progress(0, "reading the phases")
        with stage("read"):
            case = read_case(args.phases[0] if len(args.phases) == 1 else args.phases, resample=args.resample,
                             select=select)
            phases_used = chosen[0] if chosen and chosen[0].is_subset else None
            if phases_used is not None:  # said before the work starts; the outputs hold only these phases
                print(f"synbt synthesize: using {phases_used.describe()}: {', '.join(case.phase_names)}", flush=True)
            existing = None
            if existing_path is not None:
                from ..export import read_existing_tumors

                existing = read_existing_tumors(existing_path, case, "the case")
        progress(5, "reading the mask" if args.mask else "placing the tumor")
        with stage("place"):
            mask, details = _tumor_mask(args, case, existing)
        if existing is not None:
            details["existing_tumors"] = {"path": str(existing_path.resolve()), "voxels": int(existing.sum()),
                                          "label_value": EXISTING_TUMOR_LABEL}
        out = OutputFolder(args.out, overwrite=args.overwrite, inputs=inputs)  # locked; written as a whole
        extra = {"kinetics": args.kinetics} if args.kinetics else {}
        if necrosis is not None:
            extra["necrosis"] = necrosis
        result = synthesizer(case, mask, seed=args.seed, steps=steps, progress=progress.within(10, 90), **extra)
        progress(90, "writing the outputs")
        details["steps"] = steps
        if phases_used is not None:
            details["phases_used"] = phases_used.record() | {"names": list(case.phase_names)}
        if args.method == "diffusion":
            from ..bundle import bundle_sha256, default_bundle_path

            bundle = Path(args.bundle) if args.bundle else default_bundle_path()
            details["bundle"] = {"path": str(bundle.resolve()), "sha256": bundle_sha256(bundle)}
            details.update(synthesizer.describe(args.seed, args.kinetics, mask, case.geometry.spacing[::-1], necrosis))
        else:
            details["synthesizer"] = synthesizer.describe(args.seed)
        with stage("write"):
            write_synthesis_outputs(out, result, mask, inputs, args.method, args.seed, details, original=case,
                                    existing=existing, stored=case.stored)
        progress(100, "done")
    finally:
        progress.close()
    if args.progress == "json":
        print(json.dumps({"event": "done", "out": str(out)}), flush=True)
    else:
        print(f"synbt synthesize: {args.method} tumor of {int(mask.sum())} voxels written to {out}")
    return 0
