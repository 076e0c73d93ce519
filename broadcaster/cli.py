"""Command line: argument parsing only; the work happens in app, endpoint and the API client."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from broadcaster import __version__
from broadcaster.model import LANGUAGES, SPEED_MAX, SPEED_MIN, VOICES

DEFAULT_CONFIG = "configs/demo.toml"
DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_WS = "ws://127.0.0.1:8765/v1/endpoint"


def _setup_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    from broadcaster.logsetup import setup_logging

    setup_logging(level, fmt)


def _fail(message: str, code: int = 2) -> int:
    print(f"broadcaster: {message}", file=sys.stderr)
    return code


# --- serve --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from broadcaster.app import serve_forever
    from broadcaster.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"bad config:\n{exc}")
    overrides: dict[str, Any] = {}
    for name in ("http_host", "http_port", "ws_host", "ws_port"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if overrides:
        config = config.model_copy(update={"server": config.server.model_copy(update=overrides)})
    if args.store is not None:
        config = config.model_copy(
            update={"store": config.store.model_copy(update={"path": args.store})}
        )
    _setup_logging(args.log_level or config.logging.level, config.logging.format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_forever(config, stop)

    from broadcaster.app import EngineSetupError
    from broadcaster.store import StoreError

    try:
        asyncio.run(main())
    except (OSError, EngineSetupError, StoreError) as exc:
        return _fail(f"cannot start: {exc}")
    return 0


# --- listen -------------------------------------------------------------------------------


def cmd_listen(args: argparse.Namespace) -> int:
    from broadcaster.endpoint import EndpointRefused, ReferenceEndpoint
    from broadcaster.model import StreamFormat

    _setup_logging(args.log_level or "INFO")
    for key in args.format:
        try:
            StreamFormat.parse(key)
        except ValueError as exc:
            return _fail(f"--format {key}: {exc}")
    try:
        endpoint = ReferenceEndpoint(
            url=args.url,
            endpoint_id=args.endpoint,
            token=args.token,
            zones=args.zone,
            formats=args.format,
            out_dir=Path(args.out),
            max_announcements=args.count,
            ca_file=args.ca_file,
        )
    except ValueError as exc:
        return _fail(f"--ca-file {exc}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, endpoint.stop)
        await endpoint.run()

    try:
        asyncio.run(main())
    except EndpointRefused as exc:
        return _fail(str(exc), 3)
    except OSError as exc:
        return _fail(f"cannot connect to {args.url}: {exc}")
    return 0


# --- announce -----------------------------------------------------------------------------


def _priority(value: str) -> int | str:
    """--priority: 0-255 or a band name, as the API accepts."""
    from broadcaster.model import PRIORITY_BANDS

    if value in PRIORITY_BANDS:
        return value
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 255:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give 0-255 or a band: {', '.join(PRIORITY_BANDS)}"
        )
    return number


def _progress() -> tuple[Callable[[dict[str, Any]], None], ...]:
    """Printers for the id (at once) and each change of state, overall and per endpoint."""
    seen: dict[str, str] = {}

    def created(record: dict[str, Any]) -> None:
        print(record["id"], flush=True)

    def update(record: dict[str, Any]) -> None:
        if record.get("state") != seen.get(""):
            seen[""] = record["state"]
            reason = f" ({record['reason']})" if record.get("reason") else ""
            print(f"state: {record['state']}{reason}", flush=True)
        for eid, delivery in sorted((record.get("endpoints") or {}).items()):
            state = str(delivery.get("state"))
            if seen.get(eid) != state:
                seen[eid] = state
                print(f"  {eid}: {state}", flush=True)

    return created, update


def cmd_announce(args: argparse.Namespace) -> int:
    from broadcaster.api.client import ApiError, WaitTimeout, announce_and_wait

    if args.text is None and args.template is None:
        return _fail("give the text to speak, or --template NAME")
    body: dict[str, Any] = {}
    if args.text is not None:
        body["text"] = args.text
    if args.zone:
        body["zones"] = args.zone
    for name in ("template", "voice", "language", "speed", "style", "priority"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    token = args.token or os.environ.get("BROADCASTER_TOKEN") or None
    on_created, on_update = _progress()
    try:
        _, final = asyncio.run(
            announce_and_wait(
                args.api,
                body,
                wait=args.wait,
                timeout_s=args.timeout,
                token=token,
                ca_file=args.ca_file,
                on_created=on_created,
                on_update=on_update,
            )
        )
    except WaitTimeout as exc:
        url = f"{args.api.rstrip('/')}/v1/announcements/{exc.created['id']}"
        print(
            f"broadcaster: announcement {exc.created['id']} {exc}; it carries on. Look it up "
            f"with\n  curl -H 'Authorization: Bearer $BROADCASTER_TOKEN' {url}",
            file=sys.stderr,
        )
        return 1
    except ApiError as exc:
        return _fail(str(exc), 1)
    if final is None:
        return 0
    print(f"spoken by: {final.get('engine')}")
    for warning in final.get("warnings") or []:
        print(f"warning: {warning}")
    if final.get("cost_usd") is not None:
        print(f"cost: ${final['cost_usd']:.6f}")
    if final.get("first_audio_ms") is not None:
        print(f"first audio after {final['first_audio_ms']} ms; duration {final['duration_ms']} ms")
    endpoints = final.get("endpoints") or {}
    if not endpoints:
        print("no endpoint received it")
    for eid, d in sorted(endpoints.items()):
        receipt = d.get("receipt") or {}
        print(
            f"  {eid}: {d['format']} sent {d['chunks_sent']}/{d['chunks_queued']} chunks, "
            f"dropped {d['dropped_stale'] + d['dropped_overflow']}; "
            + (
                f"endpoint says {receipt.get('status')} ({receipt.get('chunks')} chunks, "
                f"{receipt.get('duration_ms')} ms, {receipt.get('gaps')} gaps)"
                if receipt
                else "no receipt from the endpoint"
            )
        )
    return 0 if final["state"] == "finished" else 1


# --- token / check-config -----------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    """Endpoint form (no --role): the token and its hash. API form: the [[api_tokens]] entry."""
    from broadcaster.config import hash_token, new_token

    if args.role is None and (args.id is not None or args.zones is not None):
        return _fail("--id and --zones make an API token: give --role too")
    if args.role is not None and args.id is None:
        return _fail("--role makes an API token: give its --id too")
    token = args.token or new_token()
    if args.role is None:
        print(f"token:      {token}")
        print(f'token_hash = "{hash_token(token)}"')
        return 0
    zones = [z.strip() for z in (args.zones or "").split(",") if z.strip()]
    if args.zones is not None and not zones:
        return _fail("--zones: give zone ids separated by commas")
    print(f"token: {token}")
    print("(shown once: give it to the caller, who sends 'Authorization: Bearer <token>')")
    print()
    print("# paste into the server config:")
    print("[[api_tokens]]")
    print(f"id = {json.dumps(args.id)}")
    print(f'role = "{args.role}"')
    print(f'token_hash = "{hash_token(token)}"')
    if zones:
        print(f"zones = {json.dumps(zones)}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from broadcaster.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"bad config:\n{exc}")
    print(
        json.dumps({"ok": True, "zones": cfg.zone_ids, "endpoints": [e.id for e in cfg.endpoints]})
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broadcaster", description="Real-time text-to-speech public address."
    )
    p.add_argument("--version", action="version", version=f"broadcaster {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the service (HTTP API + endpoint WebSocket server)")
    s.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})"
    )
    s.add_argument("--http-host")
    s.add_argument("--http-port", type=int)
    s.add_argument("--ws-host")
    s.add_argument("--ws-port", type=int)
    s.add_argument("--store", help="SQLite database path (overrides [store] path)")
    s.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.set_defaults(func=cmd_serve)

    li = sub.add_parser("listen", help="run the reference PA endpoint")
    li.add_argument("--url", default=DEFAULT_WS, help=f"server URL (default {DEFAULT_WS})")
    li.add_argument("--endpoint", required=True, help="endpoint id from the server config")
    li.add_argument("--token", required=True)
    li.add_argument("--zone", action="append", required=True, help="zone to join (repeatable)")
    li.add_argument(
        "--format",
        action="append",
        default=None,
        help="accepted format codec/rate in order of preference, e.g. opus/48000 (repeatable)",
    )
    li.add_argument("--out", default="received", help="folder for the WAV files")
    li.add_argument("--count", type=int, help="exit after this many announcements")
    li.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    li.add_argument("--ca-file", help="PEM CA certificate to trust for a wss:// server")
    li.set_defaults(func=cmd_listen)

    a = sub.add_parser("announce", help="send an announcement through the HTTP API")
    a.add_argument("text", nargs="?", help="what to say (optional with --template)")
    a.add_argument("--template", help="a template from the config (text, voice... defaults)")
    a.add_argument(
        "--zone", action="append", help="target zone (repeatable; a template may give them)"
    )
    a.add_argument("--voice", choices=[*VOICES, "auto"])
    a.add_argument("--language", choices=LANGUAGES)
    a.add_argument("--speed", type=float, help=f"{SPEED_MIN}–{SPEED_MAX}")
    a.add_argument("--style", help="style prompt (positivePrompt) for engines that take one")
    a.add_argument(
        "--priority",
        type=_priority,
        help="0–255 or a band: background, routine, operational, emergency",
    )
    a.add_argument(
        "--token",
        help="API token, sent as Authorization: Bearer (default: $BROADCASTER_TOKEN)",
    )
    a.add_argument(
        "--wait",
        action="store_true",
        help="print progress as it plays (state, each endpoint) and the deliveries at the end",
    )
    a.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    a.add_argument("--api", default=DEFAULT_API, help=f"API base URL (default {DEFAULT_API})")
    a.add_argument("--ca-file", help="PEM CA certificate to trust for an https:// API")
    a.set_defaults(func=cmd_announce)

    t = sub.add_parser(
        "token",
        help="make a token and its config lines: an endpoint's, or with --role an API token's",
    )
    t.add_argument("--token", help="hash this token instead of making a new one")
    t.add_argument("--role", choices=["viewer", "operator", "dispatcher", "admin"])
    t.add_argument("--id", help="the API token's id (shown in the audit log)")
    t.add_argument("--zones", help="limit the API token to these zones: a,b (default: all)")
    t.set_defaults(func=cmd_token)

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("config")
    c.set_defaults(func=cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "listen" and not args.format:
        args.format = ["opus/48000", "pcm_s16le/48000"]
    try:
        rc: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at /dev/null so
        # the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    return rc


if __name__ == "__main__":
    sys.exit(main())
