"""An estimator that records where each of its fits ran (process id and Ray node), for the
Ray tests. Pickled by value (see test_distributed.py): Ray's workers cannot import tests/."""

from __future__ import annotations

import os

from sklearn.linear_model import LogisticRegression


class WhereFit(LogisticRegression):
    """LogisticRegression that appends "<pid> <parent pid> <ray node id or ->" to
    ``WhereFit.log``."""

    log = ""

    def fit(self, x, y, sample_weight=None):
        node = "-"
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {os.getppid()} {node}\n")
        return super().fit(x, y, sample_weight=sample_weight)
