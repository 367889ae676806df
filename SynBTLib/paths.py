"""Where shipped files live (no heavy imports: the Slicer panel reads this before torch is loaded)."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def default_bundle_path() -> Path:
    """The phantom bundle shipped inside the package (SynBTLib/bundles/phantom)."""
    return PACKAGE_DIR / "bundles" / "phantom"
