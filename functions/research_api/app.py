"""Lambda handler of the research API (routes /dicomweb/... and /research/...): see `deidflow.cloud.research_api`."""

from deidflow.cloud.research_api import handler  # noqa: F401
