"""Filter saliency (Levin et al., 2022): the filter index, per-image saliency and its checks, the stored dataset profiles, failure modes;
and the checks of any map by intervention: occlusion maps (``OcclusionMap``) and the counterfactual check (``CounterfactualCheck``)."""

from core.methods.saliency.counterfactual import (
    CounterfactualCheck,
    CounterfactualResult,
    loss_gradient_maps,
)
from core.methods.saliency.occlusion import OcclusionMap, OcclusionResult, occlusion_geometry

__all__ = [
    "CounterfactualCheck",
    "CounterfactualResult",
    "OcclusionMap",
    "OcclusionResult",
    "loss_gradient_maps",
    "occlusion_geometry",
]
