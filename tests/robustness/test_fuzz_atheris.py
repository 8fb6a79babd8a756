"""The bounded coverage-guided fuzz run of CI: every harness in fuzz/ for a fixed number of
executions from its seed corpus, with a fixed libFuzzer seed (reproducible).

Skipped when atheris is not installed (``pip install -e '.[test]'`` brings it), except under
``CI=true``, where a missing fuzzer is a failure. A crash fails the test with the harness's
output (the Python traceback and the crash input, which libFuzzer writes to the test's
temporary directory); turn it into a regression test in test_fuzz_regressions.py. The long run
is documented in fuzz/README.md.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.conformance import in_ci

REPO = Path(__file__).resolve().parents[2]

# executions per harness: ~45 s for all of them on one core of the CI machine
RUNS = {
    "parse_message": 20_000,
    "author_domains": 20_000,
    "dmarc_record": 20_000,
    "authres": 8_000,
    "dkim_tags": 20_000,
    "dkim_verify": 20_000,
    "config_text": 20_000,
    "spf": 10_000,
    "pipeline": 2_500,
}


def test_every_harness_is_run() -> None:
    harnesses = {p.stem.removeprefix("fuzz_") for p in (REPO / "fuzz").glob("fuzz_*.py")}
    assert harnesses == set(RUNS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", list(RUNS))
def test_bounded_fuzz_run(target: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        message = "atheris is not installed (pip install atheris)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    corpus = tmp_path / "corpus"
    command = [sys.executable, str(REPO / "fuzz" / f"fuzz_{target}.py"),
               f"-runs={RUNS[target]}", "-seed=1", "-max_len=4096", "-timeout=30",
               "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/",
               str(corpus)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=280)
    output = done.stdout + done.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(
        ("crash-", "timeout-", "oom-", "leak-")))
    assert done.returncode == 0 and not crashes, f"{target}: {crashes}\n{output[-6000:]}"
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    assert executed is not None, output[-3000:]
    assert int(executed.group(1)) >= RUNS[target]
    coverage = re.search(r"#\d+\s+DONE\s+cov: (\d+)", output)
    print(f"fuzz_{target}: {executed.group(1)} executions, "
          f"coverage {coverage.group(1) if coverage else '?'} edges")
