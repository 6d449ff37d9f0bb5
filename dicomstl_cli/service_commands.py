"""The service's commands: ``up``, ``serve``, ``worker``, ``scheduler``, ``migrate``,
``apikey``, ``credits``, ``health`` (``dicomstl_cli.health``) and ``submit`` (the bulk API
from a clinic's side)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from dicomstl_cli import health

err = Console(stderr=True)
out = Console()
SERVICE_COMMANDS = ("up", "serve", "worker", "scheduler", "migrate", "apikey", "credits",
                    "health", "submit")


def add_commands(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("up", help="run the whole service on this machine (web, worker, "
                              "scheduler; Redis too unless REDIS_URL is set)")
    sub.add_parser("serve", help="run the web app (gunicorn)")
    w = sub.add_parser("worker", help="run a conversion worker")
    w.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    s = sub.add_parser("scheduler", help="run the retention and recovery loop")
    s.add_argument("--once", action="store_true", help="one pass, then stop")
    sub.add_parser("migrate", help="bring the database to the newest schema")
    health.add_command(sub)

    k = sub.add_parser("apikey", help="make, list or revoke API keys")
    ks = k.add_subparsers(dest="apikey_command", required=True)
    kc = ks.add_parser("create", help="make a key (shown once)")
    kc.add_argument("--name", required=True, help="who the key is for, e.g. the clinic")
    kc.add_argument("--account", metavar="EMAIL",
                    help="the account whose organisation owns the key (its jobs take that "
                         "organisation's credits); without it, an operator's key whose jobs "
                         "cost nothing")
    ks.add_parser("list", help="list keys (prefixes, never the keys)")
    kr = ks.add_parser("revoke", help="revoke a key by its prefix")
    kr.add_argument("prefix")

    c = sub.add_parser("credits", help="grant credits to an account (payments off, or a "
                                       "goodwill gesture); show a balance")
    cs = c.add_subparsers(dest="credits_command", required=True)
    cg = cs.add_parser("grant", help="add credits to the organisation of an account")
    cg.add_argument("email")
    cg.add_argument("credits", type=int)
    cb = cs.add_parser("show", help="an account's organisation: balance and recent ledger")
    cb.add_argument("email")

    b = sub.add_parser("submit", help="upload series to a dicomstl server and fetch the models",
                       description="Each argument is one series (a folder, files or a .zip). "
                                   "The URL and key come from --url/--key or DICOMSTL_URL and "
                                   "DICOMSTL_API_KEY.")
    b.add_argument("inputs", nargs="+")
    b.add_argument("--url", default=os.environ.get("DICOMSTL_URL", "http://127.0.0.1:8000"))
    b.add_argument("--key", default=os.environ.get("DICOMSTL_API_KEY"))
    b.add_argument("--options", default="{}",
                   help='conversion options as JSON, e.g. \'{"preset": "bone"}\'')
    b.add_argument("--wait", action="store_true", help="wait for the models and download them")
    b.add_argument("--out", default=".", help="folder for the downloaded models")
    b.add_argument("--callback-url", help="URL the server POSTs to when each job ends")


def run(args: argparse.Namespace) -> int:
    from dicomstl.settings import load_settings

    if args.command == "submit":
        return _submit(args)
    if args.command == "health":  # reads only: no umask, no migration, no files
        return health.run(args)
    from dicomstl.storage import private_umask

    private_umask()  # uploads, models, the database: owner-only
    settings = load_settings()
    if args.command in ("serve", "worker", "scheduler") and settings.redis_url is None:
        from dicomstl.errors import ConfigError

        raise ConfigError(f"REDIS_URL is not set: `dicomstl up` starts a Redis itself, but "
                          f"`dicomstl {args.command}` on its own needs one, e.g. "
                          "REDIS_URL=redis://127.0.0.1:6379/0")
    from dicomstl.db import migrate

    migrate(settings.database_url)  # the one place a process brings the schema up to date
    if args.command == "up":
        from dicomstl_cli.launcher import up
        return up(settings)
    if args.command == "serve":
        from dicomstl_cli.launcher import serve
        serve(settings)
        return 0
    if args.command == "worker":
        from dicomstl_cli.launcher import run_worker
        run_worker(settings, burst=args.burst)
        return 0
    if args.command == "scheduler":
        from scheduler.main import run_scheduler
        run_scheduler(settings, once=args.once)
        return 0
    if args.command == "migrate":
        out.print("database is at the newest schema")
        return 0
    if args.command == "credits":
        return _credits(args, settings.database_url)
    return _apikey(args, settings.database_url)


def _organisation_of(url: str, email: str):
    """The organisation of the account with this address, or None (after saying so)."""
    from dicomstl import accounts, organisations

    user = accounts.find_user(url, email)
    if user is None:
        err.print(f"no account has the address {escape(email)}")
        return None
    return organisations.place_of(url, user.id).org


def _credits(args: argparse.Namespace, url: str) -> int:
    from dicomstl import credits
    from dicomstl.db import session_scope

    org = _organisation_of(url, args.email)
    if org is None:
        return 2
    if args.credits_command == "grant":
        if not 0 < args.credits <= 1_000_000:
            err.print("grant 1 to 1,000,000 credits")
            return 2
        with session_scope(url) as session:
            credits.grant(session, org.id, args.credits, "grant")
    out.print(f"balance: {credits.balance(url, org.id)} credit(s)")
    for entry in credits.history(url, org.id, 10) if args.credits_command == "show" else ():
        print(f"{entry.created_at:%Y-%m-%d %H:%M}  {entry.delta:+6d}  {entry.reason}")
    return 0


def _apikey(args: argparse.Namespace, url: str) -> int:
    from dicomstl import apikeys

    if args.apikey_command == "create":
        org_id = None
        if args.account:
            org = _organisation_of(url, args.account)
            if org is None:
                return 2
            org_id = org.id
        key = apikeys.create_key(url, args.name, org_id)
        out.print(f"API key for {escape(key.name)} (shown once; keep it secret):")
        print(key.key)
        out.print("webhook secret (verifies the X-Dicomstl-Signature of callbacks):")
        print(key.webhook_secret)
        return 0
    if args.apikey_command == "list":
        for row in apikeys.list_keys(url):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
            owner = f"organisation {row.org_id}" if row.org_id else "operator"
            print(f"{row.prefix}  {state:<18} last used {used:<16}  {owner:<18}  {row.name}")
        return 0
    if not apikeys.revoke_key(url, args.prefix):
        err.print(f"no key with prefix {escape(args.prefix)}")
        return 2
    out.print(f"revoked {escape(args.prefix)}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    import json

    from dicomstl_cli.client import ApiError, Client

    if not args.key:
        err.print("[bold red]error:[/] give --key or set DICOMSTL_API_KEY")
        return 2
    try:
        options = json.loads(args.options)
    except ValueError:
        err.print("[bold red]error:[/] --options must be a JSON object")
        return 2
    client = Client(args.url, args.key)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    submitted: list[tuple[str, dict]] = []
    failures = 0
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err) as bar:
        for item in args.inputs:
            name = Path(item).name or "series"
            task = bar.add_task(f"upload {escape(name[:21])}", total=None)
            try:
                job = client.submit([item], options, callback_url=args.callback_url,
                                    progress=lambda done, total, t=task: bar.update(
                                        t, completed=done, total=total))
            except (ApiError, OSError) as exc:
                bar.update(task, description=f"[red]refused {escape(name[:20])}")
                err.print(f"[bold red]error:[/] {escape(name)}: {escape(str(exc))}")
                failures += 1
                continue
            submitted.append((name, job))
    for name, job in submitted:
        out.print(f"{escape(name)}: job {job['id']} {job['state']}")
    if not args.wait:
        return 1 if failures else 0
    for name, job in submitted:
        try:
            job = client.wait(job["id"])
            if job["state"] == "done":
                suffix = ".3mf" if job["options"].get("format") == "3mf" else ".stl"
                path = client.download(job["id"], out_dir / f"{name}{suffix}")
                mesh = job["report"]["mesh"]
                out.print(f"[green]done[/] {escape(name)} -> {escape(str(path))} "
                          f"({mesh['triangles']:,} triangles, {mesh['volume_cm3']:.1f} cm³)")
                continue
            failures += 1
            if job.get("choices"):
                uids = ", ".join(c["uid"] for c in job["choices"])
                err.print(f"[yellow]{escape(name)}: several series; resubmit with "
                          f'--options \'{{"series": "<uid>"}}\' using one of: {uids}')
            else:
                err.print(f"[red]{escape(name)}: {job['state']}: "
                          f"{escape(str(job.get('message')))}")
        except ApiError as exc:
            failures += 1
            err.print(f"[red]{escape(name)}: {escape(str(exc))}")
    return 1 if failures else 0
