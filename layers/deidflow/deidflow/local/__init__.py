"""Laptop only, never deployed (the Lambda layer leaves it out): the whole workflow on moto
(`workflow`), the SAM template read for it (`template`), a real Orthanc on loopback (`orthanc`),
and a stock OHIF viewer served on loopback with a same-origin DICOMweb proxy (`ohif`)."""
