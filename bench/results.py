"""bench/RESULTS.md: each bench owns one `## ` section, replaced whole on every run; the others are kept."""

import re
from pathlib import Path


def publish(section: str, path: Path | None) -> None:
    """Print a bench's section, and write it into `path` (None: a smoke run, written nowhere)."""
    print("\n" + section)
    if path:
        write_section(path, section)
        print(f"written to {path}")


def write_section(path: Path, section: str) -> None:
    """Replace the section with `section`'s heading (or put it before the first other section)."""
    heading = section.splitlines()[0].strip()
    text = path.read_text() if path.is_file() else "# Bench results\n"
    parts = re.split(r"(?m)^(?=## )", text)
    kept = [part for part in parts[1:] if part.splitlines()[0].strip() != heading]
    path.write_text(parts[0].rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n\n" + "".join(kept).rstrip("\n") + "\n")
