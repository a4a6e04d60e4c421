"""deidflow: DICOM de-identification engine shared by the Lambdas and the `deidflow` command."""

__version__ = "0.1.0"
