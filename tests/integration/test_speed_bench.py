"""The speed bench (bench/speed.py, issue 12 item 1) runs end to end on the tiny models: every variant
(Easel's Engine, Easel over HTTP, plain diffusers in float32 and in Easel's dtype) makes its picture
and gets figures in the table, and the results file keeps the other benches' sections. Timings are
never asserted: the figures only have to be there and be numbers."""

import re
import subprocess
import sys
from pathlib import Path

from bench.results import write_section
from bench.speed import SECTION
from bench.speed_variants import VARIANTS, step_seconds

REPO = Path(__file__).resolve().parents[2]
OTHER = "## Another bench\n\nits figures, kept\n"
NUMBER = r"\d+\.\d+"


def test_tiny_mode_reports_every_variant_with_numbers(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Bench results\n\nintro\n\n{SECTION}\n\nan older speed table, replaced\n\n{OTHER}")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "speed.py"), "--tiny", "--results", str(results),
         "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert text.count(SECTION) == 1 and "an older speed table" not in text
    assert text.startswith("# Bench results\n\nintro\n") and OTHER in text
    section = text[text.index(SECTION):text.index(OTHER)]
    assert "--tiny" in section and "CPU:" in section and "flags:" in section and "torch " in section
    assert "compiled mode: off" in section  # --tiny runs Easel eager: compiling takes minutes
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| variant"):
            rows[cells[0]] = cells
    labels = ("Easel, Engine in process", "Easel, HTTP API", "plain diffusers, float32", "plain diffusers, Easel's dtype")
    assert len(rows) == len(VARIANTS)
    for label in labels:
        cells = next(cells for name, cells in rows.items() if name.startswith(label))
        dtype, threads, step, text_s, decode, end, at_20, peak = cells[1:]
        assert dtype in ("float32", "bfloat16"), cells
        assert threads == "1"
        for value in (step, text_s, decode, end, at_20, peak):
            assert re.fullmatch(NUMBER, value), cells
        assert float(end) > 0 and float(peak) > 0.1  # a Python process with torch is > 100 MB
    assert rows[next(name for name in rows if name.startswith("plain diffusers, float32"))][1] == "float32"
    assert len(re.findall(r"as fast", section)) == 4  # both Easel variants against both plain ones


def test_step_time_is_the_median_after_the_first_step():
    stamps = [(1, 10.0), (2, 11.0), (3, 12.5), (4, 13.5), (6, 15.5)]  # steps 5 and 6 reported together
    assert step_seconds(stamps) == 1.0
    assert step_seconds([(1, 3.0)]) is None


def test_write_section_adds_before_other_sections(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Bench results\n\nintro\n\n{OTHER}")
    write_section(results, f"{SECTION}\n\nnew table\n")
    assert results.read_text() == f"# Bench results\n\nintro\n\n{SECTION}\n\nnew table\n\n{OTHER}"
