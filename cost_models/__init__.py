"""Cost models: how long each op takes on each target and each tensor takes to move."""

from cost_models.base import CostModel
from cost_models.roofline import RooflineCostModel

__all__ = ["CostModel", "RooflineCostModel"]
