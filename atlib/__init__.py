"""atlib: the helpers behind atbook, the executable re-run of arXiv 2108.12001.

Four layers, one package each, every layer importing only itself and the layers below (``tests/test_layers.py``):
``book`` (runner, CLI, pages, claims ledger) → ``studies`` (one package per chapter: ``theory``, ``shrinkage``,
``confidence``, ``distillation``, ``audit``, each with settings / runs / rules / views, and the shared
``profiles``, ``context``, ``prose``, ``verdict``) → ``training`` (train, evaluate, distill, masking, pool, ...)
→ ``core`` (data, models, attacks, store, config, plots, and ``stats``: the pure logit statistics).
"""

__version__ = "0.1.0"
