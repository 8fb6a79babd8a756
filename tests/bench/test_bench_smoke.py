"""Smoke test of the benchmark harness (``python -m bench --quick``, and ``--quick --peers``
where rspamd is installed).

It checks that the command completes, stops what it started, and reports a sane structure:
numbers present and non-negative, every ratio field present. No timing thresholds: the
benchmark reports numbers, it never judges them here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RATIO_FIELDS = {"msgs_per_s", "txn_p50", "txn_p99", "eom_p50", "cpu_ms_per_msg", "peak_pss_mb"}
BASELINES = {"vs_noop", "vs_chain", "vs_rspamd", "vs_mailsec"}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _non_negative_numbers(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _non_negative_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _non_negative_numbers(item, f"{where}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        assert value >= 0, f"{where} = {value}"


def _run_bench(out: Path, *extra: str, timeout: float = 150) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *extra, "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert out.with_suffix(".md").read_text().count("| mailsec |") >= 2
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _check_result(r: dict[str, Any], messages: int) -> None:
    """The structure every (milter, level) result has, whichever milter it is."""
    assert r["messages"] == messages
    assert r["ok"] == r["messages"] and r["errors"] == 0, r["error_kinds"]
    assert r["msgs_per_s"] > 0
    for kind in ("eom", "txn"):
        lat = r["latency_ms"][kind]
        assert set(lat) >= {"p50", "p95", "p99"}
        assert lat["p50"] <= lat["p95"] <= lat["p99"]
    assert r["milter"]["peak_rss_mb"] > 0 and r["milter"]["peak_pss_mb"] > 0
    assert {"cpu_ms_per_msg", "cpu_cores"} <= set(r["milter"]) | set(r["driver"])
    assert isinstance(r["driver"]["saturated"], bool)
    assert sum(r["verdict_mismatch_kinds"].values()) == r["verdict_mismatches"]
    assert set(r["ratios"]) == BASELINES
    assert all(set(ratios) == RATIO_FIELDS for ratios in r["ratios"].values())
    _non_negative_numbers({k: v for k, v in r.items() if k != "ratios"}, r["target"])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run_bench(tmp_path_factory.mktemp("bench") / "quick.json")


@pytest.mark.timeout(180)
def test_quick_run_measures_both_milters_at_both_levels(report: dict[str, Any]) -> None:
    assert report["options"]["levels"] == [1, 8]
    assert [t["key"] for t in report["targets"]] == ["noop", "mailsec"]
    pairs = {(r["target"], r["concurrency"]) for r in report["results"]}
    assert pairs == {("noop", 1), ("noop", 8), ("mailsec", 1), ("mailsec", 8)}
    for r in report["results"]:
        _check_result(r, report["options"]["messages_per_level"])


@pytest.mark.timeout(180)
def test_every_result_carries_ratio_fields(report: dict[str, Any]) -> None:
    for r in report["results"]:
        assert set(r["ratios"]) == BASELINES
        assert all(set(ratios) == RATIO_FIELDS for ratios in r["ratios"].values())
        # A ratio is null only where its baseline is missing or zero (a quick run's CPU can be
        # under one clock tick); throughput and latency always have one.
        vs_noop = r["ratios"]["vs_noop"]
        assert all(v is None or v > 0 for v in vs_noop.values())
        assert vs_noop["msgs_per_s"] and vs_noop["txn_p50"] and vs_noop["eom_p50"]
        assert all(v is None for v in r["ratios"]["vs_chain"].values())  # no --peers
        assert all(v is None for v in r["ratios"]["vs_rspamd"].values())
        if r["target"] == "noop":
            assert all(v in (None, 1.0) for v in vs_noop.values())
    assert report["issue7_targets"] and report["skipped"] == {}


@pytest.mark.timeout(180)
def test_corpus_is_reproducible_and_mixed(report: dict[str, Any]) -> None:
    (corpus,) = report["corpus"]
    assert corpus["seed"] == 7 and len(corpus["digest"]) == 64
    assert {"pass-rsa", "pass-ed25519", "forgery"} <= set(corpus["categories"])
    assert corpus["size_bytes"]["min"] >= 3000


@pytest.mark.timeout(180)
def test_every_process_it_started_is_gone(report: dict[str, Any]) -> None:
    pids = [p for t in report["targets"] for p in t["pids"]] + [report["dns"]["pid"]]
    pids += [report["dns"]["cache_pid"]] if report["dns"].get("cache_pid") else []
    assert pids and all(isinstance(p, int) for p in pids)
    assert [p for p in pids if _alive(p)] == []


def test_corpus_generation_is_deterministic() -> None:
    from bench.corpus import build_corpus

    first, again = build_corpus("main", 7, 30), build_corpus("main", 7, 30)
    assert first.digest() == again.digest()
    assert build_corpus("main", 8, 30).digest() != first.digest()
    names = {name for name, _type, _value, _ttl in first.zone}
    for message in first.messages:
        assert message.from_domain in names and f"_dmarc.{message.from_domain}" in names


def _rspamd_installed() -> bool:
    return shutil.which("rspamd", path=os.environ.get("PATH", "") + ":/usr/sbin") is not None


@pytest.fixture(scope="module")
def peers_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not _rspamd_installed():
        pytest.skip("rspamd is not installed (scripts/install-deps.sh --bench)")
    out = tmp_path_factory.mktemp("bench") / "quick-peers.json"
    data = _run_bench(out, "--peers", timeout=240)
    if any(t["key"] == "rspamd" for t in data["targets"]):
        assert out.with_suffix(".md").read_text().count("| rspamd |") >= 2  # ratios, details
    return data


@pytest.mark.timeout(300)
def test_quick_peers_run_measures_rspamd(peers_report: dict[str, Any]) -> None:
    keys = [t["key"] for t in peers_report["targets"]]
    assert keys[:2] == ["noop", "mailsec"] and "rspamd" in keys, peers_report["skipped"]
    assert set(keys) | set(peers_report["skipped"]) >= {"chain", "rspamd"}
    rspamd = next(t for t in peers_report["targets"] if t["key"] == "rspamd")
    assert any(note.startswith("checked at start") for note in rspamd["notes"])
    pairs = {(r["target"], r["concurrency"]) for r in peers_report["results"]}
    assert pairs == {(key, c) for key in keys for c in (1, 8)}
    for r in peers_report["results"]:
        _check_result(r, peers_report["options"]["messages_per_level"])
        vs_rspamd = r["ratios"]["vs_rspamd"]
        assert vs_rspamd["msgs_per_s"] and vs_rspamd["txn_p50"] and vs_rspamd["eom_p50"]
        if r["target"] == "rspamd":
            assert all(v in (None, 1.0) for v in vs_rspamd.values())
    moonshot = [t for t in peers_report["issue7_targets"] if "rspamd" in t["target"]]
    assert moonshot and all(t["value"] is None or t["value"] > 0 for t in moonshot)


@pytest.mark.timeout(300)
def test_quick_peers_run_stops_what_it_started(peers_report: dict[str, Any]) -> None:
    pids = [p for t in peers_report["targets"] for p in t["pids"]] + [peers_report["dns"]["pid"]]
    assert [p for p in pids if _alive(p)] == []
    rspamd = next((t for t in peers_report["targets"] if t["key"] == "rspamd"), None)
    assert rspamd is not None, peers_report["skipped"]
    # Its workers name their listening address in their title ("rspamd_proxy process (...)").
    port, _, host = rspamd["addresses"][0].split(":", 1)[1].partition("@")
    titles = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and _alive(int(proc.name)):
                titles.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    assert not [t for t in titles if f"({host}:{port})" in t]
