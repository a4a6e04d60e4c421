"""Lambda handler of the research API (DICOMweb and /research routes): `deidflow.cloud.research_api`."""

from deidflow.cloud.research_api import handler

__all__ = ["handler"]
