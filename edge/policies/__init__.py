"""Rate-control policies of the edge: which rate point each compressed feature is sent at.

==============  =============================================================
``fixed``       one rate point for every frame (the paper's setting, baseline)
``cfqa-target`` the lowest rate whose CFQA metric meets a target (raw value or
                calibrated task accuracy)
``bandwidth``   the highest quality the link carries before the deadline
``hybrid``      ``cfqa-target`` capped by the link budget
==============  =============================================================

The ``oracle`` (the lowest rate with an unchanged task output, a bound) needs
ground truth a device does not have: it is registered offline, by
:mod:`cfqa_sim.ratecontrol.oracle`, for scenarios and ``cfqa policies eval``.

``get_policy(name, **params)`` returns a new instance (one per node); the
interface types live in :mod:`cfqa_edge.policies.api`, the live context (real
codec, decoder and metric) in :mod:`cfqa_edge.policies.live`. Numpy only at
import; nothing here imports the simulator.
"""
from __future__ import annotations

from cfqa_edge.policies import bandwidth, cfqa_target, fixed, hybrid  # noqa: F401  (register the policies)
from cfqa_edge.policies.api import Decision, EncodeOutcome, Feedback, Policy, PolicyContext, as_decision
from cfqa_edge.policies.registry import POLICIES, get_policy, policy_names, register_policy

__all__ = [
    "POLICIES", "Decision", "EncodeOutcome", "Feedback", "Policy", "PolicyContext", "as_decision",
    "get_policy", "policy_names", "register_policy",
]

