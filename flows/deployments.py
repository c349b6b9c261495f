"""After `prefect deploy`: the deployments refuse parameters the flow does not have.

Prefect's parameter schema lets unknown keys through, so a run created with a
misspelt parameter would be accepted and then fail in the worker. With
`additionalProperties: false` the server refuses it when the run is created.
"""

from __future__ import annotations

from prefect import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

FLOW = "mnist-pipeline"


def forbid_unknown_parameters() -> list[str]:
    """Close the parameter schema of every deployment of the flow; returns their names."""
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])))
        for deployment in deployments:
            schema = {**deployment.parameter_openapi_schema, "additionalProperties": False}
            client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))
    return sorted(d.name for d in deployments)


if __name__ == "__main__":
    forbid_unknown_parameters()
