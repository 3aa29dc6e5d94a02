"""The options of a head map: :class:`MapConfig`, the one config of every map function.

:func:`~circuitlens.mapping.map.map_heads`, :func:`~circuitlens.mapping.map.random_map`,
:func:`~circuitlens.mapping.map.correspond_features` and
:func:`~circuitlens.mapping.map.correspond` take ``config: MapConfig | None`` and the config's
field names as keyword overrides (``map_heads(s, t, budget=5, one_to_one=True)`` is
``map_heads(s, t, config=MapConfig(budget=5, one_to_one=True))``): :func:`map_config` reads
them, and refuses a name that is not a field. A function reads the fields it needs and
ignores the others (``random_map`` reads no ``method``). :class:`DistillConfig`
(``circuitlens.distill.config``) holds one as its ``map`` part.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from circuitlens.core.validate import ConfigError, check_fields, config_with_overrides
from circuitlens.mapping.features import TEACHER_BASELINES, TeacherBaseline
from circuitlens.mapping.methods import METHODS as CORRESPONDENCE_METHODS

#: student heads to train by default: 13% of them (the paper trains 11-15% of a student's heads)
DEFAULT_BUDGET = 0.13


@dataclass(frozen=True)
class MapConfig:
    """How student heads are chosen and find their teacher partners.

    Attributes:
        budget: student heads to train, a fraction (default 0.13) or a count.
        one_to_one: an assignment (distinct teacher heads) instead of each student head's
            nearest teacher head.
        method: a correspondence method of :func:`circuitlens.mapping.map.correspond`
            (``"impact"``: the paper's closest ``|dP_s - dP_t|``, the default; ``"impact-rank"``,
            ``"profile"``, ``"cka"``, ``"combined"``, or one added with ``register_method``). The
            student heads are the budget's top impacts whatever the method; the method chooses
            their partners.
        teacher_baseline: ``"student"`` (dP_t = P_s - P_t^abl, the paper's apparent choice) or
            ``"own"`` (each model against its own P); the teacher's sweep measures it.
        seed: seed of the random control map (:func:`~circuitlens.mapping.map.random_map`);
            given to :func:`~circuitlens.mapping.map.map_heads`, the seed of the CKA methods'
            permutation null (the distillation pipeline's map keeps that at 0).
        n_perm: permutations of the CKA methods' null (``map_heads``; default 20).
    """

    budget: float | int = DEFAULT_BUDGET
    one_to_one: bool = False
    method: str = "impact"
    teacher_baseline: TeacherBaseline = "student"
    seed: int = 0
    n_perm: int = 20

    def __post_init__(self) -> None:
        check_fields(self, {"budget": (0, None), "n_perm": (0, None)}, what="MapConfig")
        if self.budget <= 0:
            raise ConfigError(
                f"budget must be a fraction in (0, 1] or a count >= 1 (got {self.budget!r})"
            )
        if isinstance(self.budget, float) and self.budget > 1:
            raise ConfigError(
                f"budget {self.budget!r} is a fraction above 1: write a count of heads as an "
                f"integer ({int(self.budget)}), or a fraction in (0, 1]"
            )
        if self.method not in CORRESPONDENCE_METHODS:
            raise ConfigError(
                f"unknown map method {self.method!r}; valid: "
                f"{', '.join(CORRESPONDENCE_METHODS)} (or one added with register_method)"
            )
        if self.teacher_baseline not in TEACHER_BASELINES:
            raise ConfigError(
                f"teacher_baseline must be 'student' or 'own' (got {self.teacher_baseline!r})"
            )

    def with_overrides(self, **overrides: Any) -> MapConfig:
        """A copy with fields replaced by name; an unknown name is a :class:`TypeError`
        that lists the fields."""
        return config_with_overrides(MapConfig, self, overrides)


#: the fields of :class:`MapConfig`, in order: the keyword overrides the map functions take
MAP_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MapConfig))


def map_config(
    config: MapConfig | None, overrides: dict[str, Any], caller: str, also: tuple[str, ...] = ()
) -> MapConfig:
    """The config a map function runs with: ``config`` (None: the defaults) with ``overrides``
    (its ``**overrides``: MapConfig fields by name) replacing its fields.

    Args:
        config: the caller's ``config`` argument.
        overrides: the caller's keyword overrides (``also``'s names already taken out).
        caller: the function's name, for the messages.
        also: other names the caller takes by keyword (listed in the message as valid).

    Raises:
        TypeError: ``config`` is not a MapConfig (a positional call of the form before the
            config: ``map_heads(s, t, None, 5)``), or an override names no field (the message
            lists the valid names).
        ConfigError: a field's value is refused (as :class:`MapConfig` refuses it).
    """
    return config_with_overrides(MapConfig, config, overrides, caller, also)


__all__ = ["DEFAULT_BUDGET", "MAP_FIELDS", "MapConfig", "map_config"]
