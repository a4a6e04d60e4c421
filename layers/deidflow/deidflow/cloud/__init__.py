"""The AWS edge of deidflow: what the Lambdas of the workflow do, with their clients injected.

The domain package (one level up) never calls AWS. This subpackage reads and writes S3, DynamoDB,
Secrets Manager and Rekognition around it (`services` builds every client); `functions/<step>/app.py`
are thin handlers over `steps`. What runs this on a laptop (the workflow on moto, the template
reader) lives in `deidflow.local`, which the Lambda layer leaves out.
"""
