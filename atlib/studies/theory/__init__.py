"""Chapter 01's study: logit shrinkage derived for linear models, the Gaussian prediction, the flip radius of the deep
nets and the logit-shrinking controls. Its face: ``settings``, ``runs``, ``rules`` / ``rule``, ``views``
(:mod:`atlib.studies.face`); ``controls`` holds the deep-net experiments."""
from atlib.studies.face import FACE as __all__, face

__getattr__, __dir__ = face(__name__)
