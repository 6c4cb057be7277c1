"""``python -m openai_batch_emulator`` / ``openai-batch-emulator``: serve the emulator."""

from __future__ import annotations

import argparse
import ipaddress
import sys

import uvicorn

from openai_batch_emulator.app import create_app
from openai_batch_emulator.config import FAULT_KINDS, FLAVORS, EmulatorConfig
from openai_batch_emulator.server import uvicorn_config

__all__ = ["FAULT_KINDS", "exposure_warning", "main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="openai-batch-emulator",
        description="A local OpenAI Batch and Files API for demos and tests: base URL http://HOST:PORT/v1.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--api-key",
        default=None,
        help="accept only this Bearer key, on the API and on the /_emulator admin routes (default: any key, and "
        "admin routes open to all)",
    )
    parser.add_argument(
        "--flavor",
        choices=FLAVORS,
        default="openai",
        help="the service to play: openai (/v1, Bearer key) or azure (/openai/v1 and the classic "
        "/openai/...?api-version= paths, api-key header or Entra ID bearer token, Azure's errors and line rules)",
    )
    parser.add_argument(
        "--phase-seconds",
        type=float,
        default=1.0,
        help="duration of validating, in_progress, finalizing and cancelling (default 1.0)",
    )
    parser.add_argument(
        "--completion-window-seconds",
        type=float,
        default=86_400.0,
        help="the emulated 24h window; shorter than 3 phases makes batches expire",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every /v1 answer")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of /v1 requests that get a fault")
    parser.add_argument(
        "--fault-kinds", default="429,500,502,503,drop", help=f"comma-separated subset of {','.join(FAULT_KINDS)}"
    )
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with a 429")
    parser.add_argument("--slow-seconds", type=float, default=30.0, help="delay of a 'slow' fault")
    parser.add_argument(
        "--fault-after-processing",
        action="store_true",
        help="process a faulted POST before answering with the fault (an ambiguous failure, as after a timeout); "
        "never for a 429, which the real API answers without acting",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault draw, for reproducible runs")
    parser.add_argument(
        "--fault-script",
        default="",
        help="comma-separated faults for the first /v1 requests, one each, before the random draw; an empty "
        "item is no fault (e.g. '500,,drop')",
    )
    parser.add_argument(
        "--expire-after-fraction",
        type=float,
        default=None,
        help="make every batch end 'expired' after running this fraction (0-1) of its requests, in input order; "
        "the rest go to the error file as batch_expired (default: off)",
    )
    parser.add_argument(
        "--transient-failure-rate",
        type=float,
        default=0.0,
        help="chance (0-1) that each request in a batch fails transiently (a 500 or 429 line in the error file), "
        "drawn from --seed, its custom_id and attempt number (default 0)",
    )
    parser.add_argument(
        "--transient-failure-attempts",
        type=int,
        default=0,
        help="fail every request transiently on its first N attempts (counted per custom_id across batches), "
        "then let it succeed (default 0)",
    )
    parser.add_argument(
        "--enqueued-token-limit",
        type=int,
        default=None,
        metavar="N",
        help="fail a new batch with token_limit_exceeded at validation when its estimated input tokens plus those "
        "of the batches still in progress exceed N, as the real API does (default: no limit)",
    )
    parser.add_argument("--data-dir", default=None, help="persist state here so a restart loses nothing")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    kinds = [k for k in args.fault_kinds.split(",") if k]
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"--fault-kinds: unknown kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    if not 0 <= args.fault_rate <= 1:
        parser.error("--fault-rate must be between 0 and 1")
    if args.expire_after_fraction is not None and not 0 <= args.expire_after_fraction <= 1:
        parser.error("--expire-after-fraction must be between 0 and 1")
    if not 0 <= args.transient_failure_rate <= 1:
        parser.error("--transient-failure-rate must be between 0 and 1")
    if args.transient_failure_attempts < 0:
        parser.error("--transient-failure-attempts must be 0 or more")
    if args.enqueued_token_limit is not None and args.enqueued_token_limit < 1:
        parser.error("--enqueued-token-limit must be 1 or more")
    script = args.fault_script.split(",") if args.fault_script else []
    unknown = set(script) - set(FAULT_KINDS) - {""}
    if unknown:
        parser.error(f"--fault-script: unknown kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    args.fault_kinds = kinds
    args.fault_script = script
    return args


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to warn about when the emulator listens beyond this machine with no key: anyone who reaches it may
    use its API and change its settings. ``None`` on a loopback address or with a key."""
    if api_key:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        loopback = False
    if loopback:
        return None
    return (
        f"Warning: listening on {host} without --api-key: anyone who can reach this port may use the API and change "
        "the emulator's settings (/_emulator). Pass --api-key KEY, or --host 127.0.0.1."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = EmulatorConfig(
        phase_seconds=args.phase_seconds,
        completion_window_seconds=args.completion_window_seconds,
        latency_ms=args.latency_ms,
        fault_rate=args.fault_rate,
        fault_kinds=args.fault_kinds,
        retry_after=args.retry_after,
        slow_seconds=args.slow_seconds,
        fault_after_processing=args.fault_after_processing,
        api_key=args.api_key,
        seed=args.seed,
        fault_script=args.fault_script,
        expire_after_fraction=args.expire_after_fraction,
        transient_failure_rate=args.transient_failure_rate,
        transient_failure_attempts=args.transient_failure_attempts,
        enqueued_token_limit=args.enqueued_token_limit,
        flavor=args.flavor,
    )
    app = create_app(config, data_dir=args.data_dir)
    if args.flavor == "azure":
        where = f"Azure OpenAI Batch API emulator on http://{args.host}:{args.port}/openai/v1 (classic: /openai)"
    else:
        where = f"OpenAI Batch API emulator on http://{args.host}:{args.port}/v1"
    print(where, file=sys.stderr, flush=True)
    warning = exposure_warning(args.host, args.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, args.log_level)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
