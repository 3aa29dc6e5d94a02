"""Circuit discovery at head level: activation, attribution and path patching."""

from circuitlens.analysis.patching.activation import PatchingResult, activation_patch
from circuitlens.analysis.patching.attribution import atp_rank_correlation, attribution_patch
from circuitlens.analysis.patching.path import PathPatchingResult, path_patch

__all__ = [
    "PatchingResult",
    "PathPatchingResult",
    "activation_patch",
    "atp_rank_correlation",
    "attribution_patch",
    "path_patch",
]
