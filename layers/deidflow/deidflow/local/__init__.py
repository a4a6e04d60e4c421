"""Laptop only, never deployed (the Lambda layer leaves it out): the whole workflow on moto
(`workflow`), the SAM template read for it (`template`), and a real Orthanc on loopback (`orthanc`)."""
