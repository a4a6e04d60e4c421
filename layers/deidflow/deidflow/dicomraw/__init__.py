"""The only room that touches pydicom's internals (ruff's private-member rule allows it here alone):
values read from raw bytes (`read`), a data set edited below the keyword machinery (`edit`), and
dcmwrite's exact bytes, faster (`write`). Each shortcut has a differential test against pydicom's
public way, which `edit.public_setters()` and `write.dcmwrite_bytes` give."""
