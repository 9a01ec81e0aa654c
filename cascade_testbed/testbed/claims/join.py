"""One table from several full runs' `claims.json`: each claim from the last file that has it.

A full run of every claim takes longer than one sitting on a 2-core host, and a run folder
does not outlive its machine, so a published table may join claims judged from runs made at
different commits. Each joined claim keeps its per-run provenance (`attempts`: commit, code
and scenario hashes) and names the commits that made its runs; Holm's adjustment is computed
again across the joined table, since the family is the whole table. Claims the catalog no
longer holds are left out; nothing is re-judged (the runs may be gone)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cascade_testbed.common.files import MIB, read_text
from cascade_testbed.testbed import provenance
from cascade_testbed.testbed.claims.catalog import Claim
from cascade_testbed.testbed.claims.jobs import Attempt
from cascade_testbed.testbed.claims.runner import Judged, Verdict, adjust_holm
from cascade_testbed.testbed.claims.stats import Effect, at_paper_number

MAX_TABLE = 64 * MIB


class JoinError(ValueError):
    """A claims.json that cannot be joined (unreadable, or not a table of claims)."""


def read_table(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path, MAX_TABLE, "claims table"))
    except (OSError, ValueError) as exc:
        raise JoinError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise JoinError(f"{path}: not a claims.json (no list 'claims')")
    return data


def _end(value: float | None, infinite: float) -> float:
    """A JSON interval end (None stands for an unbounded one)."""
    return infinite if value is None else float(value)


def verdict_from_json(claim: Claim, entry: Mapping[str, Any]) -> Verdict:
    """The verdict a claims.json entry records, as the runner made it (for one table)."""
    v = Verdict(claim, [int(s) for s in entry.get("seed_list", [])])
    v.holds = bool(entry.get("holds"))
    v.p = entry.get("p")
    v.holds_holm = entry.get("holds_holm")
    v.error = str(entry.get("error", ""))
    v.invalid = [str(x) for x in entry.get("invalid", [])]
    v.excluded = [str(x) for x in entry.get("excluded", [])]
    if entry.get("ci95") is not None:
        low, high = entry["ci95"]
        per_seed = tuple(_end(x, math.inf) for x in entry.get("per_seed", []))
        measured = entry.get("measured")
        v.effect = Effect(_end(measured, math.inf), _end(low, -math.inf), _end(high, math.inf),
                          per_seed, entry.get("interval") or "t")
    # Judged against the catalog's paper number now: a claim may have become an ablation.
    v.at_paper = (at_paper_number(v.effect, claim.paper, claim.direction)
                  if v.effect is not None else None)
    w = entry.get("without_excluded")
    if isinstance(w, dict):
        lo, hi = w["ci95"]
        v.without_excluded = Judged(Effect(_end(w["measured"], math.inf), _end(lo, -math.inf),
                                           _end(hi, math.inf), (0.0,) * int(w["seeds"])),
                                    bool(w["holds"]), math.nan)
    v.method_values = tuple(entry.get("method_values", ()))
    v.baseline_values = tuple(entry.get("baseline_values", ()))
    v.secondary = dict(entry.get("secondary", {}))
    v.attempts = [Attempt(str(a["run"]), int(a["attempt"]), bool(a["kept"]), str(a["reason"]),
                          {k: a[k] for k in ("commit", "dirty", "code_hash",
                                             "scenario_hash") if k in a})
                  for a in entry.get("attempts", [])]
    return v


def join(claims: Sequence[Claim], tables: Sequence[Mapping[str, Any]]
         ) -> tuple[list[Verdict], dict[str, Any]]:
    """The catalog's claims, each from the last table that has it (in catalog order), Holm
    across them, and the head of the joined claims.json: the joining commit and, per claim,
    the commits that made its runs. Claims no table has are missing from the result."""
    latest: dict[str, Mapping[str, Any]] = {}
    for table in tables:
        for entry in table["claims"]:
            latest[str(entry.get("id"))] = entry
    verdicts = [verdict_from_json(c, latest[c.id]) for c in claims if c.id in latest]
    for v in verdicts:
        v.holds_holm = None
    adjust_holm(verdicts)
    now = provenance.current()
    made = {v.claim.id: sorted({str(a.provenance.get("commit")) for a in v.attempts if a.kept})
            for v in verdicts}
    meta = {"commit": now["commit"], "dirty": now["dirty"], "code_hash": now["code_hash"],
            "joined_from": [{"commit": t.get("commit"), "code_hash": t.get("code_hash"),
                             "runs_made_by": t.get("runs_made_by", [])} for t in tables],
            "claims_made_by": made}
    return verdicts, meta
