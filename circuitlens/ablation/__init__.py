"""Floor 4, ablation: the intervention engine (``interventions``), the per-position means
(``means``) and the mean-ablation sweeps, exact (``sweep``) or screened then verified
(``screening``), with their options (``config``: ``AblationConfig``) and result (``result``:
``AblationResult``)."""
