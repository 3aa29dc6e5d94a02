"""Floor 4, mapping: the map's options (``config``: ``MapConfig``, taken by every map
function), the head map (``map``: ``map_heads``, the student heads' choice, ``correspond``),
the registry of correspondence methods with the built-in methods' costs and warnings
(``methods``), the weight-space methods (``weights``), the multi-position ones (``positions``),
what the methods read (``features``), the map's warnings (``checks``) and the known answers
(``known_answer``)."""
