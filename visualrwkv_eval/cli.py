"""The `visualrwkv-eval` command line."""

from __future__ import annotations

import argparse


def _make_tiny(args: argparse.Namespace) -> None:
    from visualrwkv_eval.model.tiny import make_tiny

    out = make_tiny(args.out, seed=args.seed, size=args.size)
    print(f"wrote {out / 'model.pth'} and {out / 'vision_tower'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="visualrwkv-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-tiny", help="write a random-weight VisualRWKV (model.pth + vision_tower/)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="tiny", choices=["tiny", "1b6", "3b", "7b"])
    p.set_defaults(func=_make_tiny)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
