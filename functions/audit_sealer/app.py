"""Lambda handler of the scheduled audit sealer (hash-chained audit segments): see `deidflow.cloud.audit`."""

from deidflow.cloud.audit import sealer_handler as handler  # noqa: F401
