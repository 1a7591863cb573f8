"""Rules indexed by alertname, so an alert only meets the rules that can match it.

A rule with an `alertname = "X"` matcher is found by a dict lookup; only rules without
one (regex on alertname, or none) are checked against every alert. 1,000 rules about
other alerts therefore cost one dict lookup, not 1,000 matcher evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence

from remediator.matching import matchers
from remediator.models.alert import Alert
from remediator.models.rule import Rule


class RuleIndex:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.by_name: dict[str, Rule] = {r.name: r for r in rules}
        self._position: dict[str, int] = {r.name: i for i, r in enumerate(rules)}
        self._by_alertname: dict[str, list[Rule]] = {}
        self._unindexed: list[Rule] = []
        for rule in rules:
            name = rule.alertname
            if name is None:
                self._unindexed.append(rule)
            else:
                self._by_alertname.setdefault(name, []).append(rule)

    def match(self, alert: Alert) -> list[Rule]:
        """Rules whose source and every matcher accept the alert, in load order.

        Order matters: when two rules act on one target, the first takes the cooldown.
        """
        candidates = self._by_alertname.get(alert.labels.get("alertname", alert.name), ())
        out = [
            r
            for r in candidates
            if r.accepts_source(alert.source) and matchers.match_all(r.matchers, alert.labels)
        ]
        extra = [
            r
            for r in self._unindexed
            if r.accepts_source(alert.source) and matchers.match_all(r.matchers, alert.labels)
        ]
        if extra:
            out = sorted(out + extra, key=lambda r: self._position[r.name])
        return out

    def __len__(self) -> int:
        return len(self.rules)
