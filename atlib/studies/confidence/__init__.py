"""Chapter 03's study: which samples standard and AT models are confident about, and claim 2. Its face:
``settings``, ``runs``, ``rules`` / ``rule``, ``views`` (:mod:`atlib.studies.face`); ``matched`` and ``early`` build
the accuracy-matched control and the early-stopped snapshots."""
from atlib.studies.face import FACE as __all__, face

__getattr__, __dir__ = face(__name__)
