"""Chapter 05's study: atlib's attacks against independent oracles, worst-case robust accuracy and gradient-masking
checks. Its face: ``settings``, ``runs``, ``rules`` / ``rule``, ``views`` (:mod:`atlib.studies.face`)."""
from atlib.studies.face import FACE as __all__, face

__getattr__, __dir__ = face(__name__)
