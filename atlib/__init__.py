"""atlib: the helpers behind atbook, the executable re-run of arXiv 2108.12001.

Layers, each importing only those below it (``tests/test_layers.py`` holds the full list):
``__main__``/``book``/``compute``/``bench``/``pages``/``sphinx_ext`` → ``profiles``/``experiments``/``report``
and the per-chapter experiment modules (``theory``, ``confidence``, ``distill_runs``, ``audit``, ``claims``, ...) →
``train``/``evaluate``/``distill``/``distill_targets``/``masking``/``checkpoint``/``distributed`` →
``attacks``/``models``/``data``/``store``/``plots`` → ``stats``/``compat``/``runtime``.
"""

__version__ = "0.1.0"
