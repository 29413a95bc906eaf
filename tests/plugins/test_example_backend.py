"""The third-party backend story, end to end.

``examples/haq-backend-simplefq`` is pip-installed for real (into a temporary
``--target`` directory, never into the test environment) and driven through the
``haq-plugin`` command line in subprocesses, as a user who installed it would:
a size search (weight-only by default), a latency search (weights and inputs),
``export``, a search on two Ray workers with a backend option, ``sweep`` and
``sensitivity``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from haq_plugin.api.policy import Policy
from tests.helpers import install_example, run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "haq-backend-simplefq"
QUICK = ("--backend", "simple-fq", "--hw", "bitfusion", "--episodes", "2", "--warmup-episodes", "2",
         "--hidden", "32", "--quiet")


@pytest.fixture(scope="module")
def simplefq_site(tmp_path_factory) -> Path:
    """``pip install --target`` of a copy of the example (a build in place would litter the repository)."""
    target = install_example(EXAMPLE, tmp_path_factory.mktemp("simplefq-src"),
                             tmp_path_factory.mktemp("simplefq-site"))
    assert (target / "haq_backend_simplefq-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def search(site: Path, out: Path, *args: str) -> Policy:
    proc = run_cli("search", *QUICK, "--output", str(out), *args, path=(site,))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len((out / "episodes.csv").read_text().strip().splitlines()) == 1 + 2
    return Policy.load(out / "policy.json")


def exported(site: Path, policy: Path, output: Path, *args: str) -> tuple[dict, str]:
    proc = run_cli("export", "--policy", str(policy), "--backend", "simple-fq", "-o", str(output), *args,
                   path=(site,))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {output} (simple-fq format, " in proc.stdout
    return json.loads(output.read_text()), proc.stderr


@pytest.fixture(scope="module")
def size_search(simplefq_site, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("size") / "out"
    search(simplefq_site, out, "--constraint", "size", "--budget", "0.5")
    return out


@pytest.fixture(scope="module")
def percentile_search(simplefq_site, tmp_path_factory) -> Path:
    """Two Ray workers, a latency budget and the backend's option."""
    out = tmp_path_factory.mktemp("workers") / "out"
    search(simplefq_site, out, "--workers", "2", "--backend-option", "input_range=percentile")
    return out


def test_backends_list_shows_simple_fq_with_its_distribution_and_option(simplefq_site):
    proc = run_cli("backends", "list", path=(simplefq_site,))
    assert proc.returncode == 0, proc.stderr
    assert "simple-fq  (haq-backend-simplefq 0.1.0, plugin 'simple-fq')" in proc.stdout
    assert "--backend-option input_range='minmax' (str; one of minmax, percentile)" in proc.stdout


@pytest.mark.slow
def test_size_search_is_weight_only_and_exports_its_bits(simplefq_site, size_search, tmp_path):
    policy = Policy.load(size_search / "policy.json")
    provenance = policy.provenance
    assert provenance["search"]["quantize"] == "weights"
    assert provenance["backend"] == {"name": "simple-fq", "distribution": "haq-backend-simplefq",
                                     "version": "0.1.0", "config": {"input_range": "minmax"}}
    assert provenance["achieved"]["cost_fraction"] <= 0.5 + 1e-12
    assert 0 <= provenance["achieved"]["accuracy"] <= 100
    searched = json.loads((size_search / "simple_fq.json").read_text())
    assert searched["quantize"] == "weights" and searched["format"] == "simple-fq/1"
    assert {name: layer["weight_bits"] for name, layer in searched["layers"].items()} == \
        {name: w for name, (w, _) in policy.bits.items()}
    assert all("input_bits" not in layer for layer in searched["layers"].values())  # inputs stay float
    # haq-plugin export of the same policy, on the model stored in it, writes the same file.
    data, stderr = exported(simplefq_site, size_search / "policy.json", tmp_path / "export.json")
    assert data == searched and "warning" not in stderr


@pytest.mark.slow
def test_latency_search_quantizes_weights_and_inputs(simplefq_site, tmp_path):
    out = tmp_path / "out"
    policy = search(simplefq_site, out, "--budget", "0.5")
    assert policy.provenance["search"]["quantize"] == "weights+activations"
    assert policy.provenance["achieved"]["cost_fraction"] <= 0.5 + 1e-12
    data = json.loads((out / "simple_fq.json").read_text())
    assert data["quantize"] == "weights+activations"
    assert {name: (layer["weight_bits"], layer["input_bits"]) for name, layer in data["layers"].items()} == \
        {name: tuple(pair) for name, pair in policy.bits.items()}
    for layer in data["layers"].values():
        low, high = layer["input_range"]
        assert low <= 0.0 <= high and high > low


@pytest.mark.slow
def test_two_worker_search_records_the_backend_option_and_export_reuses_it(simplefq_site, percentile_search,
                                                                           tmp_path):
    policy = Policy.load(percentile_search / "policy.json")
    assert policy.provenance["search"]["workers"] == 2
    assert policy.provenance["backend"]["config"] == {"input_range": "percentile"}
    assert json.loads((percentile_search / "simple_fq.json").read_text())["input_range"] == "percentile"
    # Without --backend-option, export re-creates the backend with the searched option.
    data, stderr = exported(simplefq_site, percentile_search / "policy.json", tmp_path / "same.json")
    assert data["input_range"] == "percentile" and "warning" not in stderr
    assert {name: layer["input_bits"] for name, layer in data["layers"].items()} == \
        {name: a for name, (_, a) in policy.bits.items()}


@pytest.mark.slow
def test_export_backend_option_overrides_the_searched_one_with_a_warning(simplefq_site, percentile_search,
                                                                         tmp_path):
    policy = percentile_search / "policy.json"
    searched, _ = exported(simplefq_site, policy, tmp_path / "percentile.json")
    data, stderr = exported(simplefq_site, policy, tmp_path / "minmax.json",
                            "--backend-option", "input_range=minmax")
    assert ("warning: --backend-option input_range=minmax overrides the searched input_range=percentile; "
            "the export differs from what the search measured.") in stderr.splitlines()
    assert data["input_range"] == "minmax"
    # Same bits, wider input ranges: min/max contains the percentiles.
    for name, layer in data["layers"].items():
        other = searched["layers"][name]
        assert (layer["weight_bits"], layer["input_bits"]) == (other["weight_bits"], other["input_bits"])
        assert layer["input_range"][0] <= other["input_range"][0]
        assert layer["input_range"][1] >= other["input_range"][1]


@pytest.mark.slow
def test_sweep_over_two_budgets(simplefq_site, tmp_path):
    out = tmp_path / "sweep"
    proc = run_cli("sweep", *QUICK, "--budgets", "0.4,0.6", "--output", str(out), path=(simplefq_site,))
    assert proc.returncode == 0, proc.stderr
    with (out / "pareto.csv").open() as f:
        rows = list(csv.DictReader(f))
    ddpg = [row for row in rows if row["strategy"] == "ddpg"]
    assert [row["budget"] for row in ddpg] == ["0.4", "0.6"]
    assert all(row["status"] == "searched" for row in ddpg)
    for row in ddpg:
        assert float(row["cost_fraction"]) <= float(row["budget"]) + 1e-12
        policy = Policy.load(out / row["policy_file"])
        assert policy.provenance["backend"]["name"] == "simple-fq"
        assert (out / f"budget-{row['budget']}" / "simple_fq.json").is_file()


@pytest.mark.slow
def test_sensitivity_at_4_bits(simplefq_site, tmp_path):
    out = tmp_path / "sens"
    proc = run_cli("sensitivity", "--backend", "simple-fq", "--hw", "bitfusion", "--bits", "4", "--quiet",
                   "--output", str(out), path=(simplefq_site,))
    assert proc.returncode == 0, proc.stderr
    with (out / "sensitivity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 and set(rows[0]) == {"index", "layer", "cost_share", "w4", "w8", "a4", "a8", "effective"}
    assert {row["effective"] for row in rows} == {""}  # the example backend gives every layer the asked bits
    for row in rows:
        assert all(0 <= float(row[column]) <= 100 for column in ("w4", "w8", "a4", "a8"))
    assert len({row["w8"] for row in rows}) == 1  # every layer at 8 bits is the same model
    assert (out / "sensitivity.md").is_file() and (out / "sensitivity.png").is_file()
