"""Lambda handler of the backfill state machine's steps: `deidflow.cloud.backfill` (plan, prepare, finish)."""

from deidflow.cloud.backfill import backfill
from deidflow.cloud.handler import lambda_handler

handler = lambda_handler(backfill)
