"""What the tests, benchmarks and samples share, never deployed (the Lambda layer leaves it out):
synthetic PHI-laden DICOM (`synthetic`), and the mutation fuzzer and its judge (`mutations`)."""
