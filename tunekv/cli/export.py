"""`tunekv export`: the best trial of a study as a tunekv, vLLM, SGLang or TGI config, or a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tunekv.errors import BadInput, RunFailure
from tunekv.export import EXPORTERS
from tunekv.fileio import check_output_path, write_atomic
from tunekv.hardware.gpus import GpuSpec, gpu_preset, parse_price_flags, priced_local_device, with_price
from tunekv.predict.fleet import TargetLoad
from tunekv.render.results import cli_console
from tunekv.search.checks import MAX_STORAGE_URL, MAX_STUDY_NAME
from tunekv.search.options import DEFAULT_OUT
from tunekv.search.storage import DEFAULT_DB, default_url, mask, open_storage

if TYPE_CHECKING:
    import optuna


def _study_device(study: optuna.Study, flags: list[str]) -> GpuSpec:
    """The device a study searched (its GPU preset, else the device it recorded), priced for a fleet."""
    spec = study.user_attrs["spec"]
    prices = parse_price_flags(flags)
    if spec.get("gpu_preset"):
        return with_price(gpu_preset(spec["gpu_preset"]), prices)
    return priced_local_device(prices, str(spec["gpu"]))


def export_command(args: argparse.Namespace) -> int:
    if not 1 <= len(args.study) <= MAX_STUDY_NAME:
        raise BadInput(f"--study takes a name of 1 to {MAX_STUDY_NAME} characters, got {len(args.study)}")
    if args.storage is not None and len(args.storage) > MAX_STORAGE_URL:
        raise BadInput(f"--storage takes a URL of at most {MAX_STORAGE_URL} characters, got {len(args.storage)}")
    report = args.format == "report"
    if args.target_load is not None:
        if not report:
            raise BadInput("--target-load goes with --format report (the report adds the fleet for the load)")
        TargetLoad.parse(args.target_load)
        parse_price_flags(args.price)
    elif args.price:
        raise BadInput("--price goes with --target-load (it prices the fleet that carries a target)")
    out = Path(args.out or f"{args.study}-report") if args.out or report else None
    if out is not None:  # before the study is read: an export that cannot be written is refused at once
        check_output_path(out, "--out", directory=report)
    if args.storage is None:
        db = Path(DEFAULT_OUT) / DEFAULT_DB
        if not db.is_file():
            raise BadInput(f"no search storage at ./{db}; pass --storage (the URL tunekv search used)")
        url = default_url(DEFAULT_OUT)
    else:
        url = args.storage
    import optuna

    from tunekv.search.session import best_of, plan_of

    storage = open_storage(url, read_only=True)  # an export changes no file of the user's
    names = optuna.get_all_study_names(storage)
    if args.study not in names:
        raise BadInput(f"no study '{args.study}' in {mask(url)}; studies there: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=args.study, storage=storage)
    if "spec" not in study.user_attrs:
        raise BadInput(f"study '{args.study}' was not made by tunekv search")
    best = best_of(study)
    if best is None:
        raise BadInput(f"study '{args.study}' has no trial that met its SLO yet")
    if args.target_load is not None and best.spec["load"] is not None:
        raise BadInput(f"study '{args.study}' measured a fixed load ({best.spec['load']}), not a capacity: "
                       "--target-load needs a study that searched the capacity under the SLO")
    if not best.has_config and args.format != "report":
        raise BadInput(f"study '{args.study}' measured a running deployment's capacity, not a config: it has only "
                       "--format report")
    console = cli_console()
    if args.format == "report":
        from tunekv.search.fleet import search_fleet
        from tunekv.search.report import write_report

        assert out is not None
        fleet = None
        if args.target_load is not None and best.has_config:
            fleet = search_fleet(TargetLoad.parse(args.target_load), _study_device(study, args.price), study)
        try:
            path = write_report(best, study, out, plan_of(best), fleet)
        except OSError as exc:  # checked before: the disk filled, or the folder went away since
            raise RunFailure(f"could not write {exc.filename or out} ({exc.strerror or exc})") from None
        console.print(f"wrote {path}")
        return 0
    text = EXPORTERS[args.format](best)
    if out is not None:
        try:
            write_atomic(out, text)
        except OSError as exc:
            raise RunFailure(f"could not write {out} ({exc.strerror or exc})") from None
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0
