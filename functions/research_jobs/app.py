"""Lambda handler of the cohort and export jobs' steps: `deidflow.cloud.research_jobs`."""

from deidflow.cloud.research_jobs import handler

__all__ = ["handler"]
