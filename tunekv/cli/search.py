"""`tunekv search`: its arguments, checked before torch and optuna load (bad input: exit 2 at
once), then the search with its live table (cli/search_run.py)."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from tunekv.errors import BadInput
from tunekv.hardware.gpus import GpuSpec, gpu_preset, parse_price_flags, priced_local_device, with_price
from tunekv.predict.fleet import TargetLoad
from tunekv.render.results import cli_console
from tunekv.search.checks import check_options
from tunekv.search.options import SearchOptions


def search_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    console = Console(stderr=True) if args.json_lines else cli_console()
    options = SearchOptions.from_args(args)
    if options.startup_timeout is not None and options.server is None and options.server_cmd is None:
        raise BadInput("--startup-timeout goes with --server or --server-cmd (it bounds a launched server's start-up)")
    device = _priced_device(args, options)
    checked = check_options(options)
    from tunekv.cli.search_run import run_search  # torch, optuna and the engine load from here on

    return run_search(args, options, checked, device, console, started)


def _priced_device(args: argparse.Namespace, options: SearchOptions) -> GpuSpec | None:
    """With --target-load, the device the fleet is made of, with its price (a preset's, --price or
    the prices file); BadInput for a bad load or price, or a device with none. None without it."""
    if args.target_load is None:
        if args.price:
            raise BadInput("--price goes with --target-load (it prices the fleet that carries a target)")
        return None
    TargetLoad.parse(args.target_load)
    fixed = options.fixed_load_flags()
    if fixed:
        raise BadInput(f"--target-load sizes the fleet from the capacity under the SLO; leave out {fixed[0]}")
    prices = parse_price_flags(args.price)
    if options.gpu not in (None, "local"):
        return with_price(gpu_preset(options.gpu), prices)
    return priced_local_device(prices)
