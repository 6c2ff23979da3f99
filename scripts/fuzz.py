"""The longer fuzz campaign: the targets of tests/test_fuzz.py, random (not derandomised),
for a given time; every finding is kept and the run goes on.

    python scripts/fuzz.py --minutes 30                   # every target, round robin
    python scripts/fuzz.py --minutes 5 --targets model,explain --findings fuzz_findings/
    nice -n 19 python scripts/fuzz.py --minutes 60 --case-seconds 300 &  # kill PID: report

Prints, per target, the inputs tried and their outcomes (ok: a result; error: an
OnnxCamError with a message; bug / crash / hang / partial: findings), and writes each
finding's input file and details under --findings (findings.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import (  # noqa: E402
    CASE_SECONDS,
    TARGETS_FUZZED,
    Campaign,
    Tally,
    Worker,
    new_folder,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402

ROUND = 40  # inputs per target before moving to the next one


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--targets", default=",".join(TARGETS_FUZZED),
                        help=f"comma-separated, of {', '.join(TARGETS_FUZZED)}")
    parser.add_argument("--findings", type=Path, default=Path("fuzz_findings"))
    parser.add_argument("--case-seconds", type=float, default=CASE_SECONDS,
                        help="a case without an outcome after this long is a hang (default: "
                             f"{CASE_SECONDS:.0f}; raise it on a loaded machine)")
    args = parser.parse_args()
    targets = args.targets.split(",")
    unknown = set(targets) - set(TARGETS_FUZZED)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    folder = new_folder()
    worker = Worker(folder / "worker.log", seconds=args.case_seconds)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the run with its report
    campaign = Campaign(folder, worker, findings=args.findings)
    tallies = {t: Tally() for t in targets}
    deadline = time.monotonic() + 60 * args.minutes
    try:
        while time.monotonic() < deadline:
            for target in targets:
                if time.monotonic() >= deadline:
                    break
                _round(campaign, target, tallies[target], deadline)
    except KeyboardInterrupt:  # stopped early (Ctrl-C, SIGINT): report what was tried
        pass
    finally:
        worker.close()
        shutil.rmtree(folder, ignore_errors=True)
    _report(tallies, args.findings)
    return 0 if not any(t.findings for t in tallies.values()) else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _round(campaign: Campaign, target: str, tally: Tally, deadline: float) -> None:
    """ROUND random inputs of one target; outcomes go to `tally`, never stop the run."""
    strategy, run = TARGETS_FUZZED[target]

    @settings(max_examples=ROUND, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one_input(value):
        if time.monotonic() >= deadline:
            return
        before = len(campaign.tally.findings)
        outcome = run(campaign, value)
        detail = campaign.tally.findings[-1] if len(campaign.tally.findings) > before else None
        tally.add(target, outcome, detail[2] if detail else "", detail[3] if detail else None)
        if detail:
            print(f"[{target}] {outcome}: {Tally.headline(detail[2])}", flush=True)

    one_input()


def _report(tallies: dict[str, Tally], findings: Path) -> None:
    kinds = ["ok", "error", "bug", "crash", "hang", "partial"]
    print("\n| target | inputs | " + " | ".join(kinds) + " |")
    print("|---|---:|" + "---:|" * len(kinds))
    for target, tally in tallies.items():
        print(f"| {target} | {tally.tried} | "
              + " | ".join(str(tally.outcomes.get(k, 0)) for k in kinds) + " |")
    total = sum(t.tried for t in tallies.values())
    found = [f for t in tallies.values() for f in t.findings]
    print(f"\n{total} inputs, {len(found)} findings")
    if found:
        findings.mkdir(parents=True, exist_ok=True)
        (findings / "findings.json").write_text(json.dumps(
            [{"target": t, "outcome": o, "detail": d, "input": p} for t, o, d, p in found],
            indent=2))
        print(f"details: {findings / 'findings.json'}")


if __name__ == "__main__":
    sys.exit(main())
