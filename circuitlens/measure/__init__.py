"""Floor 4, measure: CKA with its permutation null (``cka``), the mechanism check after training
(``mechanism``) and the estimate of a run's time before it starts (``runtime_estimate``)."""
