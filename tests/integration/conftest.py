"""Integration tests run real services (a local Orthanc); each skips with a reason when one is missing."""
