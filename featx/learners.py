"""The name under which featx 0.4 saved its own types in model files (``featx.learners.KNN``
...): skops looks them up by that dotted name, so it keeps working. New code imports
:mod:`featx.learn.learners`."""

from featx.learn.learners import (  # noqa: F401
    KNN,
    ProbabilityAverage,
    StreamingSGD,
    _per_feature,
    signed_sqrt,
)
