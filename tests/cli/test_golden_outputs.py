"""A seeded demo search and its exports are byte-identical to the files in ``tests/data/golden/``.

The golden files were written by the same commands before the package was re-laid out into
subpackages; any change to the numbers a search produces shows here. Compared byte for byte:
``policy.json``, the search's own export ``qconfig_mapping.json``, ``episodes.csv`` and the
``haq-plugin export`` output of each built-in backend. Ignored: the ``seconds`` and
``eval_seconds`` columns of ``episodes.csv`` (wall-clock timings), which are removed from both
sides before comparing. ``summary.md`` and ``policy.png`` are not compared (the summary quotes
timings; the figure's bytes depend on matplotlib). Set ``HAQ_WRITE_GOLDEN=1`` to rewrite the files
after an intended change of the search's results.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from tests.helpers import run_cli

GOLDEN = Path(__file__).parent.parent / "data" / "golden"
SEARCH = ("search", "--backend", "torch.ao", "--hw", "bitfusion", "--episodes", "4", "--warmup-episodes", "2",
          "--hidden", "32", "--seed", "0", "--quiet")
EXPORTS = {"torch.ao": "export-torch_ao.json", "brevitas": "export-brevitas.json", "torchao": "export-torchao.json"}
TIMING_COLUMNS = ("seconds", "eval_seconds")


def without_timings(text: str) -> str:
    """``episodes.csv`` without its wall-clock columns, otherwise unchanged."""
    rows = list(csv.reader(io.StringIO(text)))
    keep = [i for i, name in enumerate(rows[0]) if name not in TIMING_COLUMNS]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[row[i] for i in keep] for row in rows])
    return out.getvalue()


def produced(tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "run"
    proc = run_cli(*SEARCH, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    files = {name: (out / name).read_bytes() for name in ("policy.json", "qconfig_mapping.json")}
    files["episodes.csv"] = without_timings((out / "episodes.csv").read_text()).encode()
    for backend, name in EXPORTS.items():
        proc = run_cli("export", "--policy", str(out / "policy.json"), "--backend", backend,
                       "-o", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        files[name] = (tmp_path / name).read_bytes()
    return files


@pytest.mark.slow
def test_seeded_demo_search_and_exports_match_the_golden_files(tmp_path):
    files = produced(tmp_path)
    if os.environ.get("HAQ_WRITE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (GOLDEN / name).write_bytes(data)
    for name, data in files.items():
        assert data == (GOLDEN / name).read_bytes(), f"{name} differs from tests/data/golden/{name}"
