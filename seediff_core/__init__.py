"""seediff: segmentation masks read from a diffusion model's attention, with no training.

    from seediff_core import Segmenter
    result = Segmenter.from_name("shapes-world").segment("scene.png", ["circle", "square"])
    result["circle"].mask  # (H, W) uint8 0/255 at the image's original size
"""

from .config import SeediffConfig
from .images import ImageError
from .limits import CostLimitError
from .models import ModelNotFoundError, load_model
from .pipeline import Cancelled, Segmenter
from .results import LabelMask, SegmentationResult

__all__ = ["Cancelled", "CostLimitError", "ImageError", "LabelMask", "ModelNotFoundError", "SeediffConfig", "SegmentationResult", "Segmenter", "load_model"]
__version__ = "0.1.0"
