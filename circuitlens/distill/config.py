"""What :func:`~circuitlens.distill.pipeline.distill_circuit` is told: one small config per
concept, composed.

- the sweeps: :class:`~circuitlens.ablation.config.AblationConfig` (metric, prompts,
  bootstrap intervals, exact or screened), the one config of every mean-ablation sweep;
- the map: :class:`~circuitlens.mapping.config.MapConfig` (budget, one-to-one, the
  correspondence method, the teacher's baseline, the random control's seed, the CKA null's
  permutations), defined with the map functions that take it (``circuitlens.mapping.config``)
  and imported here;
- the training: :class:`~circuitlens.distill.train_config.TrainConfig` (the condition, the
  optimiser, the CKA term, evaluation);

:class:`DistillConfig` holds one of each and the test prompts. Every default is declared in
its own class only. Files and overrides may also name the options flat, by the names they had
before the configs were composed (:data:`FLAT_KEYS`: ``sweep_n``, ``budget``, ``map_method``,
...): ``DistillConfig().with_overrides(sweep_n=32, budget=7, lam=2)``; saved configs of that
flat form read as they were written.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlens.ablation.config import AblationConfig
from circuitlens.core.validate import ConfigError, check_fields
from circuitlens.distill.train_config import TrainConfig
from circuitlens.mapping.config import MapConfig
from circuitlens.mapping.features import TeacherBaseline
from circuitlens.mapping.methods import METHODS as CORRESPONDENCE_METHODS  # noqa: F401 (cli)

#: keys of a run file (``circuitlens distill --config``) that name what to run, not options
RUN_KEYS = ("teacher", "student", "task", "task_options")

#: the flat names of composed options (files written before the composition, overrides, CLI
#: flags) -> (the part, its field)
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "metric": ("sweep", "metric"),
    "sweep_n": ("sweep", "n"),
    "n_boot": ("sweep", "n_boot"),
    "budget": ("map", "budget"),
    "one_to_one": ("map", "one_to_one"),
    "map_seed": ("map", "seed"),
    "map_method": ("map", "method"),
    "teacher_baseline": ("map", "teacher_baseline"),
}


def refuse_unknown_keys(
    cls: type, d: dict[str, Any], what: str, also: tuple[str, ...] = ()
) -> None:
    """A config dict may only hold the dataclass's fields (and ``also``): name the others and
    the valid ones."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a table of options (got {type(d).__name__} {d!r})")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid) - set(also))
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; valid keys: {valid + list(also)}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table in a ``.toml`` or ``.json`` file; a :class:`ConfigError` that names the file
    and the problem when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {str(path)!r}")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {str(path)!r}: name it .toml or .json (read by its suffix)")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:]}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of options at the top")
    return data


def build(cls: type, d: Any, what: str) -> Any:
    """``cls(**d)`` from a table of its options (unknown keys refused); an instance passes
    through. Every problem is a :class:`ConfigError` that starts with ``what``."""
    if isinstance(d, cls):
        return d
    refuse_unknown_keys(cls, d, what)
    try:
        return cls(**d)
    except (ConfigError, TypeError, ValueError) as e:  # a table where a number belongs, ...
        raise ConfigError(f"{what}: {e}") from e


def _default_sweep() -> AblationConfig:
    return AblationConfig()


#: the parts of a DistillConfig and their classes
PARTS: dict[str, type] = {"sweep": AblationConfig, "map": MapConfig, "train": TrainConfig}


@dataclass(frozen=True)
class DistillConfig:
    """Every option of :func:`distill_circuit` (loads from TOML or JSON; unknown keys refused).

    Attributes:
        sweep: both models' mean-ablation sweeps (:class:`AblationConfig`: ``metric``, default
            ``"prob"``, a continuous P that separates heads accuracy ties; ``n`` prompts;
            ``n_boot`` bootstrap resamples for each head's dP interval, 0: none, and then no
            warning about impacts indistinguishable from zero; ``method``). The pipeline sets
            each sweep's baseline and adds the heads a screened sweep must measure.
        map: the head map (:class:`MapConfig`).
        test_n: test prompts for the before/after accuracy (the sweeps read
            ``sweep.split``, the ``probe`` prompts by default: what chooses the heads never
            reads the prompts they are scored on).
        train: the trainer's options (:class:`TrainConfig`), including the condition.
    """

    sweep: AblationConfig = field(default_factory=_default_sweep)
    map: MapConfig = field(default_factory=MapConfig)
    test_n: int = 500
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_fields(self, {"test_n": (1, None)}, what="DistillConfig")
        for name, cls in PARTS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(
                    f"DistillConfig.{name} must be a {cls.__name__} or a table of its options "
                    f"(got {type(getattr(self, name)).__name__})"
                )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sweep"] = self.sweep.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """Read :meth:`to_dict`'s output, or the flat form (:data:`FLAT_KEYS`)."""
        refuse_unknown_keys(cls, d, "config", also=tuple(FLAT_KEYS))
        parts: dict[str, Any] = {k: d.get(k, {}) for k in PARTS}
        where = {k: f"[{k}]" for k in PARTS}
        for k, v in d.items():
            if k not in FLAT_KEYS:
                continue
            part, name = FLAT_KEYS[k]
            if not isinstance(parts[part], dict):
                raise ConfigError(f"config: {k} given beside a ready {part} config")
            parts[part] = {**parts[part], name: v}
            where[part] += f" (given as {k})"
        built = {k: build(c, parts[k], where[k]) for k, c in PARTS.items()}
        rest = {k: v for k, v in d.items() if k not in PARTS and k not in FLAT_KEYS}
        try:
            return cls(**rest, **built)
        except TypeError as e:
            raise ConfigError(f"config: {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> DistillConfig:
        """From a ``.toml`` or ``.json`` file (``[sweep]``, ``[map]`` and ``[train]`` tables, or
        flat names); the run-file keys (:data:`RUN_KEYS`: teacher, student, task,
        task_options) are skipped."""
        data = read_config_file(path)
        return cls.from_dict({k: v for k, v in data.items() if k not in RUN_KEYS})

    def with_overrides(self, **overrides: Any) -> DistillConfig:
        """A copy with fields replaced by name: ``test_n``, a part's field by its flat name
        (``sweep_n``, ``budget``, ``map_method``: :data:`FLAT_KEYS`) or a trainer field
        (``condition="ce"``, ``lam=2``)."""
        train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
        d = self.to_dict()
        for k, v in overrides.items():
            if k in train_keys and k not in FLAT_KEYS:
                d["train"][k] = v
            else:  # a field of the config, or a flat name (from_dict puts it in its part)
                d[k] = v
        return DistillConfig.from_dict(d)

    def flat(self) -> dict[str, Any]:
        """The options in the flat form (:data:`FLAT_KEYS`, ``test_n``, ``train``), with the
        sweep's other options only where they differ from the defaults: what keys were
        computed from before the composition, so that kept sweeps still match."""
        d: dict[str, Any] = {}
        for k, (part, name) in FLAT_KEYS.items():
            d[k] = getattr(getattr(self, part), name)
        d["test_n"] = self.test_n
        d["train"] = dataclasses.asdict(self.train)
        base = AblationConfig().to_dict()
        extra = {
            k: v
            for k, v in self.sweep.to_dict().items()
            if k not in ("metric", "n", "n_boot") and base.get(k) != v
        }
        if extra:
            d["sweep"] = extra
        return d


__all__ = [
    "FLAT_KEYS",
    "PARTS",
    "RUN_KEYS",
    "DistillConfig",
    "MapConfig",
    "TeacherBaseline",
    "build",
    "read_config_file",
    "refuse_unknown_keys",
]
