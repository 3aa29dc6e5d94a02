"""Floor 4, circuits: circuit discovery at head level (activation, attribution and path
patching), ``find_circuit`` (``find``) and circuit-only accuracy (``evaluation``)."""

from circuitlens.circuits.activation import PatchingConfig, PatchingResult, activation_patch
from circuitlens.circuits.attribution import atp_rank_correlation, attribution_patch
from circuitlens.circuits.path import PathPatchingConfig, PathPatchingResult, path_patch

__all__ = [
    "PatchingConfig",
    "PatchingResult",
    "PathPatchingConfig",
    "PathPatchingResult",
    "activation_patch",
    "atp_rank_correlation",
    "attribution_patch",
    "path_patch",
]
