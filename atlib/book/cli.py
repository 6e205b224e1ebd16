"""python -m atlib {book,html,compute,pilot,bench}: build the executed book, re-render it, fill the cache without
notebooks, run the convergence pilot (the profile's models again at twice their epochs), or benchmark
adversarial training against a plain loop.

Exit codes: 0 done; 2 bad input, reported as one "error: ..." line before anything ran or was written (an
unknown option or profile, a bad --device / --workers / --executor / --out / --cache-dir, a data root without
the data); 1 a chapter or the HTML build failed while running (the message says where; a failed chapter's
notebook is kept). Each command's options: python -m atlib COMMAND --help.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from atlib.studies.profiles import DEFAULT_PROFILE, PROFILES


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the rest of atlib's bad input: one ``error: ...`` line, exit code 2 (no usage
    block; ``--help`` shows it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _count(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"{text!r}: need a whole number >= {low}")
        return n
    return parse


def _workers(text: str) -> int:
    from atlib.training.pool import parse_workers

    try:
        return parse_workers(text, "--workers")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _executor(text: str) -> str:
    from atlib.training.executor import ExecutorError, parse_executor

    try:
        return parse_executor(text, "--executor")
    except ExecutorError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_executor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", type=_executor, default=None,
                        help="where cached jobs run: local (worker processes here, the default), dask-local:N (a Dask "
                             "cluster of N single-thread processes here) or tcp://HOST:PORT (a running Dask scheduler; "
                             "README, 'Several machines'); default $ATLIB_EXECUTOR, else local")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bn = sub.add_parser("bench", help="time atlib's PGD adversarial-training epoch against a plain reference loop")
    bn.add_argument("--model", default="small_cnn", choices=("small_cnn", "resnet18"),
                    help="the network both loops train: small_cnn (the fashion profile's, width 16) or resnet18 "
                         "(PreActResNet-18, the cifar10 profile's); default small_cnn")
    bn.add_argument("--batch-size", type=_count(1), default=256, help="images per training batch (default 256)")
    bn.add_argument("--steps", type=_count(0), default=10, help="PGD steps (L∞, ε=8/255)")
    bn.add_argument("--n-images", type=_count(1), default=2048, help="synthetic images per timed epoch")
    bn.add_argument("--repeats", type=_count(1), default=3, help="timed runs per loop; the median counts")
    bn.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    bn.add_argument("--no-fast", action="store_true", help="time atlib without its CUDA speed-ups (bf16, "
                    "channels_last, fused SGD, torch.compile; $ATLIB_COMPILE=0 turns off compile alone)")
    bn.add_argument("--threads", type=_count(1), default=None, help="torch CPU threads (default: torch's choice)")
    bn.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    bn.add_argument("--ensemble", action="store_true", help="instead: 6 small CNNs one by one vs one torch.func.vmap "
                                                            "over their stacked weights (one thread, CPU): the AT "
                                                            "models' PGD step and chapter 04's students' step")


def _bench(args: argparse.Namespace) -> int:
    from atlib.core.runtime import DeviceError
    from atlib.training.bench import BenchConfig
    from atlib.training.bench import main as bench_main

    if args.ensemble:
        from atlib.training.ensemble_bench import ensemble_vs_sequential

        print(json.dumps({"AT models (width 16, PGD step)": ensemble_vs_sequential(repeats=args.repeats * 7),
                          "chapter 04 students (width 8, distillation step)": ensemble_vs_sequential(
                              repeats=args.repeats * 7, width=8, input_grad=False)}, indent=1))
        return 0
    try:
        cfg = BenchConfig(args.model, args.batch_size, args.steps, args.n_images, args.repeats, args.device,
                          fast=not args.no_fast, threads=args.threads)
        bench_main(cfg, args.json)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _common() -> argparse.ArgumentParser:
    """The options every profile command shares."""
    common = _Parser(add_help=False)
    common.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"one of: {', '.join(PROFILES)} (default {DEFAULT_PROFILE}), or a TOML profile file "
                             f"(extends = \"fashion\" plus overrides; see README, 'Your own profile')")
    common.add_argument("--cache-dir", default=None, help="artifact cache (default $ATLIB_CACHE or ~/.cache/atlib)")
    common.add_argument("--data-root", default=None, help="dataset folder (default $ATLIB_DATA, system paths, download)")
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    common.add_argument("--workers", type=_workers, default=None,
                        help="processes for independent cached jobs, one thread each (default $ATLIB_WORKERS, else "
                             "one per CPU core up to 8 on the CPU, 1 on CUDA or for the smoke profile)")
    _add_executor(common)
    return common


def _add_book(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    b = sub.add_parser("book", parents=[common], help="execute the chapters with papermill and build the HTML book")
    b.add_argument("--out", default=None, help=f"output folder (default: book/, the published book, for "
                                               f"{DEFAULT_PROFILE}; _build/books/<profile>/ for any other profile)")
    b.add_argument("--no-html", action="store_true", help="execute the chapters and write summary.json only")
    rec = b.add_mutually_exclusive_group()
    rec.add_argument("--record", action="store_true", default=False,
                     help="after a successful build, copy summary.json to results/<profile>/summary.json, the "
                          "recorded results the claims ledger reads (how a profile's results are published)")
    rec.add_argument("--no-record", dest="record", action="store_false", default=False,
                     help="do not record (the default; kept for older scripts)")
    h = sub.add_parser("html", help="build the HTML of an executed book without executing anything (refreshes the "
                                    "hand-written pages and the claims ledger)")
    h.add_argument("--out", default=None, help="the executed book's folder (default: book/)")


def _add_pilot(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    pl = sub.add_parser("pilot", parents=[common], help="convergence: train the standard, main AT and matched models "
                                                        "at the profile's schedule and at twice its epochs")
    pl.add_argument("which", choices=("convergence",))
    pl.add_argument("--out", default=None, help="where to write the record (default: results/<profile>/"
                                                "pilot_convergence.json, which chapter 02 quotes)")


def _add_parity(sub: argparse._SubParsersAction) -> None:
    pa = sub.add_parser("parity", help="bf16 vs fp32: compare two recorded books' accuracies, model type by model type")
    pa.add_argument("fp32", help="summary.json of the fp32 book")
    pa.add_argument("bf16", help="summary.json of the bf16 book")
    pa.add_argument("--out", default=None, help="write the table here (JSON, and Markdown beside it)")


def _dispatch(args: argparse.Namespace) -> None:
    from atlib.book.runner import BadInputError, render_book, run_book

    if args.cmd == "book":
        run_book(args.profile, args.out, args.cache_dir, args.data_root, args.device, html=not args.no_html,
                 record=args.record, workers=args.workers, executor=args.executor)
    elif args.cmd == "html":
        print(f"HTML: {render_book(args.out) / 'index.html'}")
    elif args.cmd == "parity":
        from atlib.book import parity

        for f in (args.fp32, args.bf16):
            if not Path(f).is_file():
                raise BadInputError(f"{f}: no such summary.json (a book's output folder holds one)")
        print(parity.markdown(parity.compare_files(args.fp32, args.bf16, args.out)))
    elif args.cmd == "pilot":
        from atlib.book.pilot import run_pilot

        path = run_pilot(args.profile, args.out, args.cache_dir, args.data_root, args.device, args.workers,
                         args.executor)
        print(f"pilot record: {path}")
    else:
        from atlib.book.compute import compute_all

        done = compute_all(args.profile, args.cache_dir, args.data_root, args.device, args.workers, args.executor)
        print(f"in the cache: {done}")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m atlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{book,html,compute,pilot,bench,parity}")
    common = _common()
    _add_book(sub, common)
    sub.add_parser("compute", parents=[common], help="run the profile's experiments into the cache, no notebooks")
    _add_pilot(sub, common)
    _add_bench(sub)
    _add_parity(sub)
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        return _bench(args)

    from atlib.book.runner import BadInputError, BookError
    from atlib.core.data import DataNotFoundError
    from atlib.core.runtime import DeviceError
    from atlib.studies.profiles import UnknownProfileError
    from atlib.training.executor import ExecutorError

    try:
        _dispatch(args)
    # bad input, before anything ran
    except (BadInputError, DeviceError, DataNotFoundError, UnknownProfileError, ExecutorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BookError as e:  # a chapter or the HTML build failed while running
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
