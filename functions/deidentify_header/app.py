"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.deidentify_header` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import deidentify_header

handler = lambda_handler(deidentify_header)
