"""Floors 5 and 6, distillation: the condition registry, losses, per-head masks, the teacher
cache, the trainer and data parallelism (floor 5); the one setup path (``pipeline.prepare``,
``setup.Setup``), ``train_condition`` and ``distill_circuit`` (floor 6)."""
