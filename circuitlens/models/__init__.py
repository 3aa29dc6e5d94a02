"""Floor 3, models: loading anything as a ``TransformerBridge`` with its card
(``registry``: ``load_model``, ``register_source``), and the two sources that register
themselves there, the real pip-packaged models (``real``: ``real:``) and the embedded zoo
(``zoo``: ``zoo:``). ``registry`` imports no source."""
