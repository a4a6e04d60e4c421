"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.index_header` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import index_header

handler = lambda_handler(index_header)
