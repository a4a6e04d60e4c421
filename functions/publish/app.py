"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.publish` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import publish

handler = lambda_handler(publish)
