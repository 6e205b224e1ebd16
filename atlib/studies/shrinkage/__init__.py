"""Chapter 02's study: the standard and AT models every chapter reuses, their logits, and claim 1 (shrinkage). Its
face: ``settings``, ``runs``, ``rules`` / ``rule``, ``views`` (:mod:`atlib.studies.face`); ``convergence`` quotes the
convergence pilot."""
from atlib.studies.face import FACE as __all__, face

__getattr__, __dir__ = face(__name__)
