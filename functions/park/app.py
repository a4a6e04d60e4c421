"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.park` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import park

handler = lambda_handler(park)
