"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.expand_batch` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import expand_batch

handler = lambda_handler(expand_batch)
