"""circuitlens: circuit distillation on TransformerLens 4.

Find a task's circuit of attention heads in a teacher, map student heads to it by ablation
impact, and train only those student heads to match their teacher heads (Wadhwa, Amir,
Wallace 2025, "Circuit Distillation").
"""

# the model sources: importing each registers its "<prefix>:" with load_model
from circuitlens.ablation.config import AblationConfig
from circuitlens.ablation.means import mean_ablated
from circuitlens.ablation.result import AblationResult
from circuitlens.ablation.sweep import ablation_sweep
from circuitlens.circuits import (
    PatchingConfig,
    PathPatchingConfig,
    activation_patch,
    attribution_patch,
    path_patch,
)
from circuitlens.circuits.find import (
    CircuitConfig,
    CircuitStageError,
    faithfulness,
    find_circuit,
)
from circuitlens.core.devices import DeviceError, check_device
from circuitlens.core.types import Circuit, Head, HeadMap, PlanStep
from circuitlens.core.version import __version__ as __version__
from circuitlens.distill.conditions import Condition, get_condition, register_condition
from circuitlens.distill.config import DistillConfig
from circuitlens.distill.pipeline import (
    ConditionResult,
    distill_circuit,
    train_condition,
)
from circuitlens.distill.result import DistillResult
from circuitlens.distill.teacher_cache import TeacherCache
from circuitlens.distill.trainer import CircuitTrainer, TrainConfig, TrainRun
from circuitlens.experiments import ExperimentConfig, ExperimentResult, run_experiment
from circuitlens.experiments.design import (
    DesignConfig,
    SeedSearch,
    design_can_reject,
    min_seeds_to_reject,
    plan_seeds,
    sign_flip_power,
)
from circuitlens.mapping import positions, weights  # noqa: F401  (register methods)
from circuitlens.mapping.config import MapConfig
from circuitlens.mapping.map import correspond, map_heads, random_map
from circuitlens.measure.cka import cka, cka_with_null, linear_cka, rbf_cka
from circuitlens.models import real, zoo  # noqa: F401
from circuitlens.models.registry import (
    ModelFacts,
    ModelLoadError,
    load_model,
    model_facts,
    register_source,
    registered_models,
)
from circuitlens.report.figures import (
    plot_ablation,
    plot_circuit,
    plot_patching,
    plot_training_curves,
)
from circuitlens.report.page import write_report
from circuitlens.tasks import (
    Prompt,
    PromptBatch,
    Task,
    TaskError,
    evaluate,
    get_task,
    make_metric,
    tokenize_prompts,
)

__all__ = [
    "AblationConfig",
    "AblationResult",
    "Circuit",
    "CircuitConfig",
    "CircuitStageError",
    "CircuitTrainer",
    "Condition",
    "DesignConfig",
    "DeviceError",
    "DistillConfig",
    "DistillResult",
    "MapConfig",
    "ExperimentConfig",
    "ExperimentResult",
    "Head",
    "HeadMap",
    "ModelFacts",
    "ModelLoadError",
    "PatchingConfig",
    "PathPatchingConfig",
    "PlanStep",
    "Prompt",
    "PromptBatch",
    "SeedSearch",
    "Task",
    "TaskError",
    "TrainConfig",
    "TrainRun",
    "ablation_sweep",
    "activation_patch",
    "attribution_patch",
    "check_device",
    "cka",
    "cka_with_null",
    "design_can_reject",
    "correspond",
    "distill_circuit",
    "train_condition",
    "ConditionResult",
    "TeacherCache",
    "evaluate",
    "faithfulness",
    "find_circuit",
    "get_condition",
    "get_task",
    "linear_cka",
    "load_model",
    "make_metric",
    "map_heads",
    "mean_ablated",
    "min_seeds_to_reject",
    "model_facts",
    "path_patch",
    "plan_seeds",
    "plot_ablation",
    "plot_circuit",
    "plot_patching",
    "plot_training_curves",
    "random_map",
    "register_condition",
    "register_source",
    "registered_models",
    "rbf_cka",
    "run_experiment",
    "sign_flip_power",
    "tokenize_prompts",
    "write_report",
]
