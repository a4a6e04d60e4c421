"""Lambda handler of the workflow state that runs `deidflow.cloud.steps.redact_burned_in_text` (see that module)."""

from deidflow.cloud.handler import lambda_handler
from deidflow.cloud.steps import redact_burned_in_text

handler = lambda_handler(redact_burned_in_text)
