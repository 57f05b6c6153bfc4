"""The runtime's internal messages: small, picklable dataclasses between the actors of a node
and between nodes, one module per conversation. Anything that belongs to a request carries
its ``request_id``.

Messages that may leave their node never hold a secret; the only one that carries one is
``SessionSnapshot``, sent from a node's session actor to that node's workers. A message's
module path is part of the wire format: the allow-list (``actors/security/allow_list.py``)
and the peer table (``actors/security/trust.py``) name them by it.
"""

from __future__ import annotations

from actors.runtime.protocol.routing import (
    Route,
    EngineCheck,
    EngineLiveness,
    RouteEntry,
    Routes,
    StatusRequest,
    EngineStatus,
    NodeStatus,
    Drain,
    Drained,
    NotReady,
)
from actors.runtime.protocol.bringup import (
    Deploy,
    Deployed,
    EngineInit,
    EngineReady,
    BreakerInit,
    SessionInit,
    LimiterInit,
    WorkerInit,
)
from actors.runtime.protocol.work import Dispatch, FirstToken, WorkerResult, WorkerReady
from actors.runtime.protocol.session import SessionSubscribe, SessionSnapshot, SessionRefresh, SessionVersion
from actors.runtime.protocol.breaker import (
    BreakerSubscribe,
    BreakerState,
    BreakerOutcome,
    BreakerOutcomes,
    BreakerCheck,
    BreakerAdmitted,
    BreakerRefused,
    BreakerQuery,
    BreakerForce,
)
from actors.runtime.protocol.budget import (
    LimiterRegister,
    LimiterDelta,
    LimiterQuery,
    LimiterUsage,
    LimiterPeers,
    LimiterStateRequest,
    LimiterHubRequest,
    LimiterHubIs,
    StrictLimiterIs,
    StrictAcquire,
    StrictGrant,
    StrictDenied,
    StrictSettle,
    StrictInit,
)
from actors.runtime.protocol.cluster import (
    Locate,
    Introduce,
    RegistrarIs,
    MemberInfo,
    Heartbeat,
    Membership,
    ClusterStatusRequest,
    ClusterStatus,
    RegistrarConfig,
    MemberRefused,
)

__all__ = [
    'Route',
    'EngineCheck',
    'EngineLiveness',
    'RouteEntry',
    'Routes',
    'StatusRequest',
    'EngineStatus',
    'NodeStatus',
    'Drain',
    'Drained',
    'NotReady',
    'Deploy',
    'Deployed',
    'EngineInit',
    'EngineReady',
    'BreakerInit',
    'SessionInit',
    'LimiterInit',
    'WorkerInit',
    'Dispatch',
    'FirstToken',
    'WorkerResult',
    'WorkerReady',
    'SessionSubscribe',
    'SessionSnapshot',
    'SessionRefresh',
    'SessionVersion',
    'BreakerSubscribe',
    'BreakerState',
    'BreakerOutcome',
    'BreakerOutcomes',
    'BreakerCheck',
    'BreakerAdmitted',
    'BreakerRefused',
    'BreakerQuery',
    'BreakerForce',
    'LimiterRegister',
    'LimiterDelta',
    'LimiterQuery',
    'LimiterUsage',
    'LimiterPeers',
    'LimiterStateRequest',
    'LimiterHubRequest',
    'LimiterHubIs',
    'StrictLimiterIs',
    'StrictAcquire',
    'StrictGrant',
    'StrictDenied',
    'StrictSettle',
    'StrictInit',
    'Locate',
    'Introduce',
    'RegistrarIs',
    'MemberInfo',
    'Heartbeat',
    'Membership',
    'ClusterStatusRequest',
    'ClusterStatus',
    'RegistrarConfig',
    'MemberRefused',
]
