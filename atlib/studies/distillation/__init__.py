"""Chapter 04's study: distilling the AT teacher on clean inputs under ablations of its outputs, and claim 3. Its
face: ``settings``, ``runs``, ``rules`` / ``rule``, ``views`` (:mod:`atlib.studies.face`); ``targets`` holds the
ablations, ``plots`` the figures and ``findings`` the generated prose."""
from atlib.studies.face import FACE as __all__, face

__getattr__, __dir__ = face(__name__)
