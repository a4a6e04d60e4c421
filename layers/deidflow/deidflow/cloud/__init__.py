"""The AWS edge of deidflow: what the Lambdas of the workflow do, with their clients injected.

The domain package (one level up) never calls AWS. This subpackage reads and writes S3, DynamoDB and
Secrets Manager around it; `functions/<step>/app.py` are thin handlers over `steps`, and `local`
runs the real state machine on moto for tests and demos.
"""
