"""Lambda handler of the scheduled audit sealer: seals the research API's audit records written
since the last run into the next hash-chained segment (see `deidflow.cloud.audit.seal_pending`)."""

from deidflow.cloud.audit import sealer_handler as handler

__all__ = ["handler"]
