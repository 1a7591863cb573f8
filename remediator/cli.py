"""Entry points: `remediator serve | check | simulate` (DESIGN.md "CLI contract")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from remediator import __version__, errors, logs, preflight
from remediator import settings as settings_mod
from remediator.engine.simulate import simulate
from remediator.intake import alertmanager, sns
from remediator.matching import loader, matchers
from remediator.matching.index import RuleIndex
from remediator.models.alert import Alert


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {"serve": _serve, "check": _check, "simulate": _simulate, "approvals": _approvals}
    handler: Any = handlers[args.command]
    return int(handler(args))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remediator", description="Alerts in, bounded remediations out."
    )
    p.add_argument("--version", action="version", version=f"remediator {__version__}")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="run the daemon")
    _config_arg(s)
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:9097)")
    s.add_argument("--rules", type=Path, help="rules directory (default ./rules)")
    s.add_argument("--data-dir", type=Path, help="journal and audit (default ./data)")
    dry = s.add_mutually_exclusive_group()
    dry.add_argument("--dry-run", dest="dry_run", action="store_true", default=None)
    dry.add_argument("--no-dry-run", dest="dry_run", action="store_false")
    c = sub.add_parser("check", help="validate rule files; exit 1 with file:line: message")
    c.add_argument("rules_dir", nargs="?", type=Path)
    _config_arg(c)
    m = sub.add_parser("simulate", help="show what the rules would do with a sample alert")
    m.add_argument(
        "alert_file",
        type=Path,
        help="an Alertmanager webhook payload, or an SNS notification body (JSON)",
    )
    m.add_argument("--rules", type=Path)
    m.add_argument("--json", action="store_true", help="machine-readable output")
    _config_arg(m)
    a = sub.add_parser("approvals", help="list, approve or reject what awaits a human")
    a.add_argument("verb", choices=("list", "approve", "reject"))
    a.add_argument("id", nargs="?", type=int, help="the approval's id (approve, reject)")
    a.add_argument("--url", default="http://127.0.0.1:9097", help="the daemon's base URL")
    a.add_argument(
        "--token-env", default="REMEDIATOR_ADMIN_TOKEN",
        help="environment variable holding an admin or approver token",
    )  # fmt: skip
    a.add_argument("--reason", default="", help="why (shown in the audit)")
    return p


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("REMEDIATOR_CONFIG") or None,
        help="config file (default $REMEDIATOR_CONFIG; none: embedded defaults)",
    )


def _settings(args: argparse.Namespace, **extra: Any) -> settings_mod.Settings:
    overrides = {k: v for k, v in extra.items() if v is not None}
    return settings_mod.load(args.config, overrides=overrides)


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "rules_dir": args.rules, "data_dir": args.data_dir, "dry_run": args.dry_run,
    }  # fmt: skip
    try:
        if args.listen:
            host, port = settings_mod.parse_listen(args.listen, "--listen")
            overrides |= {"listen_host": host, "listen_port": port}
        settings = _settings(args, **overrides)
    except errors.ConfigError as exc:
        print(f"remediator: config error: {loader.config_error(args.config, exc)}", file=sys.stderr)
        return 2
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    from remediator import runner  # noqa: PLC0415 - keeps `check` free of server imports

    # A reload reads the file again with the same flags on top (flags still win).
    return asyncio.run(runner.serve(settings, config_loader=lambda: _settings(args, **overrides)))


def _check(args: argparse.Namespace) -> int:
    """Rule files, and with --config everything checkable without the target systems."""
    try:
        settings = _settings(args)
    except errors.ConfigError as exc:
        print(loader.config_error(args.config, exc), file=sys.stderr)
        return 1
    directory = args.rules_dir or settings.rules_dir
    warnings: list[errors.RuleFileError] = []
    try:
        rules = loader.load_dir(directory, syntax=settings.matchers_syntax, warnings=warnings)
    except errors.RuleFileErrors as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    files = len(loader.rule_files(directory))
    if files == 0:
        # A wrong path must not pass as "no errors".
        print(f"{directory}: no rule files (*.yaml, *.yml) here", file=sys.stderr)
        return 1
    problems = [preflight.Problem("warning", w.file, w.line, w.message) for w in warnings]
    problems += preflight.rules(rules, settings, os.environ)
    if args.config is not None:
        lines = _config_lines(args.config, settings)
        problems += preflight.config(settings, lines=lines)
        problems += preflight.blackouts(settings, rules, lines=lines)
    for p in problems:
        print(p, file=sys.stderr)
    failed = sum(p.level == "error" for p in problems)
    if failed:
        print(f"{failed} error(s)", file=sys.stderr)
        return 1
    # What was understood, in Alertmanager's canonical form (docs/matchers.md).
    for rule in rules:
        print(f"{rule.file}:{rule.line}: {rule.name} {matchers.format_all(rule.matchers)}")
    warned = len(problems) - failed
    print(
        f"ok: {len(rules)} rules in {files} files (matchers_syntax: {settings.matchers_syntax})"
        + (f", {warned} warning(s)" if warned else "")
    )
    return 0


def _config_lines(path: Path, settings: settings_mod.Settings) -> dict[str, int]:
    doc = loader.parse_with_lines(path.read_text(encoding="utf-8"))
    paths = [ref.path for ref in settings.env_refs] + [
        f"blackouts[{i}].rules[{j}]" for i, b in enumerate(settings.blackouts)
        for j in range(len(b.rules))
    ]  # fmt: skip
    return {p: loader.key_line(doc, p) for p in paths}


def _approvals(args: argparse.Namespace) -> int:
    """`remediator approvals list|approve ID|reject ID`: the approvals API from a shell."""
    token = os.environ.get(args.token_env, "")
    if not token:
        print(f"remediator approvals: ${args.token_env} is not set", file=sys.stderr)
        return 2
    if args.verb != "list" and args.id is None:
        print(
            f"remediator approvals {args.verb}: which id? (see `approvals list`)", file=sys.stderr
        )
        return 2
    base = args.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        print(f"remediator approvals: --url must be http(s), got {base!r}", file=sys.stderr)
        return 2
    # S310: the scheme is checked just above (no file: or custom schemes).
    if args.verb == "list":
        request = urllib.request.Request(f"{base}/api/v1/approvals")  # noqa: S310
    else:
        body = json.dumps({"reason": args.reason}).encode()
        request = urllib.request.Request(  # noqa: S310
            f"{base}/api/v1/approvals/{args.id}/{args.verb}", data=body, method="POST"
        )
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - checked above
            answer = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        print(f"remediator approvals {args.verb}: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"remediator approvals: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
    if args.verb != "list":
        print(f"{args.verb} {args.id}: {answer.get('result', '')}")
        return 0
    pending = answer.get("approvals", [])
    if not pending:
        print("nothing awaits approval")
    for item in pending:
        dry = " [dry run]" if item["dry_run"] else ""
        print(
            f"{item['id']:>6}  {item['rule']}  step {item['step']}  {item['action']} "
            f"{item['target'].split(' ', 1)[-1]}{dry}  alert {item['alertname']}  "
            f"expires {item['expires_at']}"
        )
    return 0


def _sample(body: bytes) -> tuple[list[Alert], str]:
    """The alerts of a sample file: an Alertmanager payload, or an SNS notification body
    (a CloudWatch alarm) whose signature is not checked."""
    received_at = dt.datetime.now(dt.UTC)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("Type") in sns.TYPES:
        alerts = sns.sample(body, received_at=received_at)
        note = "SNS message: signature not verified (simulate never fetches certificates)"
        if not alerts:
            note += "; not a CloudWatch ALARM or OK notification, nothing to decide"
        return alerts, note
    return alertmanager.parse(body, received_at=received_at, max_alerts=10_000), ""


def _simulate(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args, rules_dir=args.rules)
        rules = loader.load_dir(settings.rules_dir, syntax=settings.matchers_syntax)
        body = args.alert_file.read_bytes()
        alerts, note = _sample(body)
    except errors.RuleFileErrors as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        return 1
    except (errors.RemediatorError, OSError) as exc:
        print(f"remediator simulate: {exc}", file=sys.stderr)
        return 1
    index = RuleIndex(rules)
    now = time.time()

    async def run_all() -> list[dict[str, Any]]:
        return [
            {
                "alert": alert.name,
                "fingerprint": alert.fingerprint,
                "status": alert.status,
                "labels": dict(alert.labels),
                "rules": await simulate(alert, index, settings, now=now),
            }
            for alert in alerts
        ]

    report = asyncio.run(run_all())
    if note:
        print(f"note: {note}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for item in report:
        print(f"alert {item['alert']} ({item['status']}) fingerprint={item['fingerprint']}")
        if not item["rules"]:
            print("  no rule matches")
        for r in item["rules"]:
            print(f"  rule {r['rule']} ({r['file']}) action={r['action']}")
            for g in r["guards"]:
                print(f"    {g['guard']:<10} {g['verdict']:<14} {g['detail']}")
            if r["params"] is not None:
                print(f"    params     {json.dumps(r['params'])}")
            if len(r["steps"]) > 1:
                print("    if it does not help:")
                for s in r["steps"][1:]:
                    verify = f", verified {s['verify_seconds']:.0f}s" if s["verify_seconds"] else ""
                    print(
                        f"      {s['step']:<9} {s['target'] or s['action']}{verify}"
                        f"{'  (' + s['problem'] + ')' if s['problem'] else ''}"
                    )
    return 0
