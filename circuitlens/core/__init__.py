"""Floor 1, plumbing: hook names, ``Head``/``Circuit``/``HeadMap``, atomic writes, weight
deltas, config validation, progress bars, run directories, the version, device checks."""
