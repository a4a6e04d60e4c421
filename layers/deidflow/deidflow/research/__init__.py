"""The research API (issue 12): what researchers may query and read, and the audit trail of it."""
