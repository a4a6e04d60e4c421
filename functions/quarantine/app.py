"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.quarantine` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import quarantine

handler = lambda_handler(quarantine)
