"""Which phases of a new case a bundle's networks get: its phase policy, applied the same way by
`synbt synthesize`, `synbt export` and the Slicer panel.

A bundle models a fixed number of phases; training recorded which ones as a phase policy
(datasets.PhasePolicy, "phase_policy" in config.json). A case with exactly that many phases is taken
as already chosen (the Slicer panel hands over the phases it chose); a case with more gets the
policy's choice, resolved on its acquisition times (a clinical times table) when the policy needs
them, else on the file order. What cannot be satisfied is refused with the reason.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .datasets import PhasePolicy, parse_acquisition_times, phase_policy
from .errors import SynBTError

ID_COLUMNS = ("patient_id", "case_id", "id")  # as MAMA-MIA's clinical table (datasets.read_clinical_times)
TIMES_COLUMN = "acquisition_times"
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


@dataclass(frozen=True)
class BundlePhases:
    """How many phases a bundle's networks take, and the policy that picked them in training (None:
    every phase of its training cases, in file order)."""

    count: int
    policy: str | None = None

    @classmethod
    def of_bundle(cls, path: str | Path) -> "BundlePhases":
        """From a bundle's config.json (no network is built: cheap enough for a GUI)."""
        from .bundle_meta import phase_policy_of

        config_file = Path(path) / "config.json"
        try:
            config = json.loads(config_file.read_text())
            count = int(config["autoencoder"].get("in_channels", 3))  # AutoencoderConfig's default
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SynBTError(f"cannot read the phases a bundle models from {config_file}: {exc}") from None
        return cls(count, phase_policy_of(config))


@dataclass(frozen=True)
class PhaseChoice:
    """The phases picked from a case: indices into its phases in file order, and why."""

    indices: tuple[int, ...]
    total: int
    policy: str | None
    times_from: str | None = None  # where the acquisition times came from, when the policy used them

    @property
    def is_subset(self) -> bool:
        return len(self.indices) < self.total

    def describe(self, names=None) -> str:
        """One log line, e.g. "phases 0, 1, 4 of 6 (phase policy pre,first,closest:300s, times from t.csv)"."""
        picked = ", ".join(f"{k}" + (f" ({names[k]})" if names else "") for k in self.indices)
        how = f"phase policy {self.policy}" if self.policy else "file order"
        if self.times_from:
            how += f", acquisition times from {self.times_from}"
        return f"phases {picked} of {self.total} ({how})"

    def record(self, names=None) -> dict:
        """For provenance files."""
        return {"indices": list(self.indices), "of": self.total, "policy": self.policy,
                "names": [names[k] for k in self.indices] if names else None, "times_from": self.times_from}


def choose_phases(count: int, bundle: BundlePhases, times=None, times_from: str | None = None,
                  what: str = "the case") -> PhaseChoice:
    """The phases of a case with ``count`` phases that the bundle's networks get.

    ``count == bundle.count``: all, in order. More: the bundle's policy picks them (``times``, one
    acquisition time in seconds per phase, for ``closest:`` tokens); without a policy, or with fewer
    phases, or when the policy cannot be resolved, a SynBTError says why and what to do."""
    if count == bundle.count:
        return PhaseChoice(tuple(range(count)), count, None)
    if count < bundle.count:
        raise SynBTError(f"{what} has {count} phases but the model bundle takes {bundle.count}"
                         + (f" (phase policy {bundle.policy})" if bundle.policy else ""))
    if bundle.policy is None:
        raise SynBTError(f"{what} has {count} phases but the model bundle takes {bundle.count} and records no phase "
                         f"policy to choose them: pass the {bundle.count} phases to use, pre-contrast first")
    policy: PhasePolicy = phase_policy(bundle.policy)
    if policy.count != bundle.count:
        raise SynBTError(f"the bundle's phase policy {policy.spec!r} picks {policy.count} phases but its networks "
                         f"take {bundle.count}")
    if times is not None and len(times) != count:
        raise SynBTError(f"{what} has {count} phases but {len(times)} acquisition times"
                         + (f" in {times_from}" if times_from else ""))
    try:
        indices = policy.select(count, None if times is None else tuple(float(t) for t in times))
    except SynBTError as exc:
        hint = " (give the acquisition times with a clinical times table)" if times is None and "closest:" in policy.spec \
            else ""
        raise SynBTError(f"{what} cannot give the phases the bundle models (phase policy {policy.spec}): {exc}{hint}") \
            from None
    return PhaseChoice(indices, count, policy.spec, times_from if times is not None and "closest:" in policy.spec else None)


def read_times_table(path: str | Path) -> dict[str, tuple[float, ...]]:
    """{case id (lower case): acquisition times in seconds} from a CSV table with an id column
    (patient_id, case_id or id) and an acquisition_times column (MAMA-MIA's clinical table saved as CSV)."""
    import csv

    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SynBTError(f"cannot read the clinical times table {path}: {exc}") from None
    columns = {key.strip().lower(): key for key in (rows[0] if rows else {}) if key}
    id_key = next((columns[c] for c in ID_COLUMNS if c in columns), None)
    if id_key is None or TIMES_COLUMN not in columns:
        raise SynBTError(f"clinical times table {path} needs an id column ({', '.join(ID_COLUMNS)}) and a "
                         f"{TIMES_COLUMN} column; it has {', '.join(columns) or 'none'}")
    table = {}
    for row in rows:
        times = parse_acquisition_times(row.get(columns[TIMES_COLUMN]))
        if row.get(id_key) and times:
            table[str(row[id_key]).strip().lower()] = times
    return table


def case_id_of(paths) -> str:
    """The id a case has in a clinical table: its folder's name (a case folder, MAMA-MIA's images/<ID>),
    else the phase files' common name without the _000K channel suffix (<id>_0000.nii.gz)."""
    from .datasets import strip_image_extension

    items = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if len(items) == 1 and items[0].is_dir():
        return items[0].name
    stems = {_CHANNEL_SUFFIX.sub("", strip_image_extension(p.name)) for p in items}
    return stems.pop() if len(stems) == 1 and len(items) > 1 else items[0].parent.name


def times_for(table: dict, case_id: str, table_path) -> tuple[float, ...]:
    times = table.get(case_id.lower())
    if times is None:
        raise SynBTError(f"case {case_id} is not in the clinical times table {table_path}")
    return times
