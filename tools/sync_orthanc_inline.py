"""Copy the two texts the Orthanc task runs into orthanc/template.yaml, where they live inline.

A task definition cannot read this repository, so orthanc/template.yaml carries the container's start
script (orthanc/container_start.py) and the HTTP filter (deidflow/data/orthanc_http_filter.lua, which
the local Orthanc loads from the file) as YAML block scalars. After editing either file:

    python tools/sync_orthanc_inline.py

tests/unit/test_orthanc_template.py fails while the template and the files differ.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "orthanc" / "template.yaml"
START = REPO / "orthanc" / "container_start.py"
HTTP_FILTER = REPO / "layers" / "deidflow" / "deidflow" / "data" / "orthanc_http_filter.lua"

# Each block: the line that opens it, and the indentation of its text.
BLOCKS = {
    START: (re.compile(r"^ {10}Command:\n {12}- \|\n", re.MULTILINE), 16),
    HTTP_FILTER: (re.compile(r"^ {12}- Name: DEIDFLOW_HTTP_FILTER\n {14}Value: \|\n", re.MULTILINE), 16),
}


def indented(text: str, indent: int) -> str:
    pad = " " * indent
    return "".join(pad + line if line.strip() else "\n" for line in text.splitlines(keepends=True))


def sync(template: str) -> str:
    for source, (opening, indent) in BLOCKS.items():
        match = opening.search(template)
        if match is None:
            raise SystemExit(f"{TEMPLATE.name}: no inline block for {source.name}")
        start = match.end()
        end = start
        lines = template[start:].splitlines(keepends=True)
        for line in lines:  # the block runs while lines are blank or indented at least `indent`
            if line.strip() and not line.startswith(" " * indent):
                break
            end += len(line)
        # Trailing blank lines belong to the YAML, not to the block.
        body = template[start:end]
        kept = body.rstrip("\n")
        trailing = body[len(kept) :]
        template = template[:start] + indented(source.read_text(), indent).rstrip("\n") + trailing + template[end:]
    return template


def main() -> int:
    text = TEMPLATE.read_text()
    synced = sync(text)
    if synced != text:
        TEMPLATE.write_text(synced)
        print(f"updated {TEMPLATE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
