"""Splits `helm template` output into one file per chart template.

Usage: split_rendered.py OUT_DIR HEADER < rendered.yaml

helm prints every document after a `# Source: <chart>/templates/<file>` line; documents of
one template go to OUT_DIR/<file>, in helm's order, each file starting with HEADER.
Templates that render nothing produce no file.
"""

import os
import re
import sys

SOURCE = re.compile(r"^# Source: [^/]+/templates/(?P<file>\S+)\s*$")


def main() -> None:
    out_dir, header = sys.argv[1], sys.argv[2]
    files: dict[str, list[str]] = {}
    current = None
    doc: list[str] = []

    def flush() -> None:
        body = "".join(doc).strip("\n")
        if current is not None and body:
            files.setdefault(current, []).append(body + "\n")

    for line in sys.stdin:
        if line.rstrip("\n") == "---":
            flush()
            current, doc = None, []
            continue
        match = SOURCE.match(line)
        if match:
            current = match.group("file")
            continue
        doc.append(line)
    flush()
    os.makedirs(out_dir, exist_ok=True)
    for name, docs in sorted(files.items()):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(header)
            f.write("---\n".join(docs))


if __name__ == "__main__":
    main()
