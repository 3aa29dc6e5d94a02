"""The paper's comparison, conditions x seeds, behind ``circuitlens reproduce``.

For each task: the teacher's circuit
(:func:`~circuitlens.circuits.find.find_circuit`), the
mean-ablation sweeps of teacher and student, and the head map are computed once (the *setup*);
then every trained condition (:data:`circuitlens.distill.trainer.CONDITIONS`) is run for every seed
from a fresh copy of the student (a *cell*). The untrained ``student`` and the ``teacher`` are
rows of the table too. Per cell: held-out test accuracy, the mapped pairs' mean CKA, the fraction
of heads and parameters trained, and a training curve (validation accuracy and mean CKA at
every evaluation), from which the steps to reach a target accuracy are read.

Everything goes to ``results/<run>/``: ``config.json``; per task ``setup.json``; per cell
``<task>/<condition>/seed<k>/cell.json``, written atomically once the cell is done (a training
checkpoint beside it while it runs), so an interrupted run resumes where it stopped without
redoing finished cells; and the tables: ``table.md``, ``table.csv``, ``cells.csv``,
``mcnemar.csv``, ``cka.csv``. With ``lr_grid``, per task ``lr.json``: each condition's learning
rate, chosen on validation (:mod:`circuitlens.experiments.lr_choice`). The HTML page (ablation
heatmaps, the circuit, the mapping, the curves) is presentation, made from the result by
:func:`circuitlens.report.page.write_report` (``circuitlens reproduce`` writes it as
``report.html``).
"""

from circuitlens.experiments.config import (
    ALL_CONDITIONS,
    DEFAULT_CONDITIONS,
    LABELS,
    TASKS,
    ExperimentConfig,
)
from circuitlens.experiments.result import ExperimentResult
from circuitlens.experiments.runner import run_experiment
from circuitlens.models.registry import model_fingerprint

__all__ = [
    "ALL_CONDITIONS",
    "DEFAULT_CONDITIONS",
    "LABELS",
    "TASKS",
    "ExperimentConfig",
    "ExperimentResult",
    "model_fingerprint",
    "run_experiment",
]
