"""CLI of the data package.

    python -m data synth OUT_DIR --n N --seed S [--split train|val|test|compositional] [--style plain|varied|mixed]
                         [--short-side PX]
    python -m data contact-sheet OUT.png [--n 12] [--seed 7] [--split train] [--style plain|varied|mixed]
    python -m data inspect PATH          # read any supported dataset and report what is usable
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from data.errors import DataFormatError
from data.vocab import SPLITS
from data.world import DEFAULT_SHORT_SIDE, STYLES


def _synth(args: argparse.Namespace) -> None:
    from data.synth import write_album

    t0 = time.perf_counter()
    r = write_album(args.out_dir, n=args.n, seed=args.seed, split=args.split, short_side=args.short_side,
                    style=args.style)
    dt = time.perf_counter() - t0
    print(
        f"wrote {r.n_photos} {args.split} photos ({args.style}) to {r.out_dir} in {dt:.1f}s "
        f"({r.n_qa} QA, {r.n_probes} POPE probes, {r.n_album_questions} album questions"
        + (f", removed {r.n_removed_stale} stale photos" if r.n_removed_stale else "")
        + ")"
    )


def _contact_sheet(args: argparse.Namespace) -> None:
    from data.contact_sheet import write_contact_sheet

    path = write_contact_sheet(args.out, n=args.n, seed=args.seed, split=args.split, style=args.style)
    print(f"wrote {path}")


def _inspect(args: argparse.Namespace) -> None:
    from data.dataset import open_dataset

    ds = open_dataset(args.path)
    n = sum(1 for _ in ds)
    print(f"{args.path}: format {ds.format}, {len(ds)} records, {n} usable, {ds.skipped} skipped")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m data", description="Sample-world photos and dataset formats.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="generate an album of sample-world photos with annotations")
    s.add_argument("out_dir")
    s.add_argument("--n", type=int, required=True, help="number of photos")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", choices=SPLITS, default="train")
    s.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE,
                   help="short side of each plain photo in px (default %(default)s)")
    s.add_argument("--style", choices=STYLES, default="plain",
                   help="plain, varied (other cameras: sizes, light, blur, noise...) or mixed (default %(default)s)")
    s.set_defaults(func=_synth)

    c = sub.add_parser("contact-sheet", help="write a PNG grid of sample photos with their captions")
    c.add_argument("out")
    c.add_argument("--n", type=int, default=12)
    c.add_argument("--seed", type=int, default=7)
    c.add_argument("--split", choices=SPLITS, default="train")
    c.add_argument("--style", choices=STYLES, default="plain")
    c.set_defaults(func=_contact_sheet)

    i = sub.add_parser("inspect", help="read a dataset (any supported format) and count usable samples")
    i.add_argument("path")
    i.set_defaults(func=_inspect)

    args = p.parse_args(argv)
    try:
        args.func(args)
    except (DataFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
