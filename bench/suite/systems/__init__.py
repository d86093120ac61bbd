"""One adapter per server: each starts its system on the suite's models, owned by the caller's
``ExitStack``, and says where it listens. See ``base`` for the contract."""

from __future__ import annotations

from bench.suite.systems.base import Running, StartContext, System
from bench.suite.systems.inferoxy import Inferoxy
from bench.suite.systems.mlserver import MLServer
from bench.suite.systems.pytriton import PyTriton
from bench.suite.systems.ray import RayServe
from bench.suite.systems.triton import Triton

ALL: dict[str, System] = {s.name: s for s in (Inferoxy(), Triton(), PyTriton(), MLServer(),
                                              RayServe())}

__all__ = ["ALL", "Running", "StartContext", "System"]
