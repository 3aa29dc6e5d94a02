"""Floor 4, analysis: the intervention engine, patching and circuits, mean-ablation sweeps
(exact or screened), the head map and the correspondence methods, circuit-only accuracy, CKA
with its null, cost estimates, the mechanism check."""
