"""SynBT: realistic synthetic breast tumors in DCE-MRI with a 3D latent diffusion model."""

__version__ = "0.1.0"

from .case import Case, Geometry  # noqa: E402
from .errors import SynBTError  # noqa: E402

__all__ = ["Case", "Geometry", "SynBTError", "__version__"]
