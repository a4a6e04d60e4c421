"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.withdraw_source` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import withdraw_source

handler = lambda_handler(withdraw_source)
