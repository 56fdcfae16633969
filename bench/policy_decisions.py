"""
Cost of one policy decision for policies of 10 and 10,000 rules (issue 3,
scenario S6 of the benchmark suite).

    .venv/bin/python bench/policy_decisions.py [--seconds 1.0]

Each policy is N url.domain rules (the shape of a large bypass or block
list) followed by the published Lync rules; hosts are drawn from rule hosts,
their subdomains and hosts no rule names. Prints microseconds per decision
and decisions per second; the figure for 10,000 rules staying close to the
one for 10 shows the host index at work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from txgate.interfaces import Checkpoint
from txgate.policy.cpl import parse_policy
from txgate.session import Address, Session

# The published Lync rules follow the N listed domains (docs/examples).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "examples", "proxysg-skype.cpl")) as _f:
    TAIL = _f.read()


def policy_text(rules: int) -> str:
    lines = ["<proxy>"] + [f"    url.domain=site{i}.example DENY(\"listed {i}\")" for i in range(rules)]
    return "\n".join(lines) + "\n" + TAIL


def measure(rules: int, seconds: float, seed: int = 1) -> dict[str, float]:
    started = time.perf_counter()
    policy = parse_policy(policy_text(rules), f"bench-{rules}.cpl")
    compile_ms = (time.perf_counter() - started) * 1000
    rng = random.Random(seed)
    hosts = []
    for _ in range(1000):
        i = rng.randrange(rules)
        hosts.append(rng.choice([f"site{i}.example", f"www.site{i}.example", f"other{i}.net", "meet.lync.com"]))
    session = Session("bench-1", "explicit", Address("10.0.0.1", 40000), 0.0, client_protocol="tcp", tunneled=True)
    facts = [{"url.host": h, "url.port": 443} for h in hosts]
    decisions = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for f in facts:
            policy.decide(Checkpoint.CONNECTION, session, f)
        decisions += len(facts)
    elapsed = time.perf_counter() - started
    return {
        "rules": rules,
        "compile_ms": round(compile_ms, 1),
        "us_per_decision": round(elapsed / decisions * 1e6, 2),
        "decisions_per_second": round(decisions / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per policy size (default 1 s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(n, args.seconds) for n in (10, 10_000)]
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'rules':>7} {'compile ms':>11} {'us/decision':>12} {'decisions/s':>12}")
    for r in results:
        print(f"{r['rules']:>7} {r['compile_ms']:>11} {r['us_per_decision']:>12} {r['decisions_per_second']:>12}")
    ratio = results[1]["us_per_decision"] / results[0]["us_per_decision"]
    print(f"cost ratio 10,000 rules / 10 rules: {ratio:.2f}x")


if __name__ == "__main__":
    main()
