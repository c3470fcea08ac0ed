"""Pipelines at run time: durable executions, the runner that resumes them, and their API.

    service.Workflows   starts and steers executions; opens the store; runs the Runner
    engine.Run          one execution's DAG: retries, timeouts, checkpoints, control
    kinds               what each kind of step does
    runner.Runner       claims executions (leases), renews them, resumes the orphaned
    api                 /api/v1/..., /ws/executions/{id}, /v1/pipelines/{name}
    approvals           the approval step: a durable wait for a decision
    agents              the agent step: calls to remote A2A agents
    a2a_api             /a2a/{name}: each pipeline as an A2A agent
    a2a_stream          its streamed methods: a task's updates as SSE
    a2a_wire            A2A's forms of a task, its status and output, and error codes
    a2a_v03             A2A 0.3's calls and shapes, translated to and from 1.0's
"""

from .a2a_api import a2a_routes
from .api import PipelineChat, workflow_routes
from .service import Workflows

__all__ = ["PipelineChat", "Workflows", "a2a_routes", "workflow_routes"]
