"""``surgseg weights``: list, download, verify and import model weights."""
from __future__ import annotations

import argparse
import json

from ..weights import (
    OFFICIAL,
    download_weights,
    import_checkpoint,
    list_weights,
    verify_weights,
    weights_dir,
)

EPILOG = """examples:
  surgseg weights list
  surgseg weights list --method f2paseg --json
  surgseg weights download sam2.1_hiera_tiny
  surgseg weights verify                      # re-hash every present checkpoint
  surgseg weights import /media/usb/sam2.1_hiera_tiny.pt   # offline machine
  surgseg weights import run3/best.pt --name pituitary-f2pa --method f2paseg
  SURGSEG_WEIGHTS_DIR=/data/weights surgseg weights list
  surgseg weights list --weights-dir /data/weights

The cache folder is --weights-dir, else $SURGSEG_WEIGHTS_DIR, else the user cache.
Official names: """ + ", ".join(OFFICIAL)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "weights",
        help="list, download, verify and import model weights",
        description="Manage the SAM2 checkpoints and fine-tuned weights surgseg can load.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--weights-dir", default=None, help="weights cache folder (default: $SURGSEG_WEIGHTS_DIR or the user cache)"
    )
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION")

    ls = sub.add_parser("list", parents=[common], help="show known weights and whether they are present")
    ls.add_argument("--method", default=None, help="only weights for this method (sam2, f2paseg, ...)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list)

    dl = sub.add_parser("download", parents=[common], help="download an official checkpoint into the cache")
    dl.add_argument("name", choices=sorted(OFFICIAL), metavar="NAME", help="official checkpoint name")
    dl.add_argument("--url", default=None, help="download from this address instead (a mirror)")
    dl.set_defaults(func=_download)

    vf = sub.add_parser("verify", parents=[common], help="re-hash checkpoints in the cache")
    vf.add_argument("name", nargs="?", default=None, help="one name (default: all present)")
    vf.set_defaults(func=_verify)

    im = sub.add_parser("import", parents=[common], help="copy a checkpoint into the cache after checking its hash")
    im.add_argument("path", help="checkpoint file (.pt or .safetensors)")
    im.add_argument("--name", default=None, help="registry name (default: file name; official names are hash-checked)")
    im.add_argument("--method", default=None, help="method that loads it (default: sam2)")
    im.add_argument("--base", default=None, help="weights it was fine-tuned from")
    im.add_argument("--variant", default=None, help="SAM2 model variant the weights belong to (default: plain SAM2)")
    im.add_argument("--force", action="store_true", help="replace weights already registered under this name")
    im.set_defaults(func=_import)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _list(args) -> int:
    entries = list_weights(args.method, weights_dir_override=args.weights_dir)
    if args.json:
        print(json.dumps([dict(vars(e), present=e.present) for e in entries], indent=2))
        return 0
    print(f"weights folder: {weights_dir(args.weights_dir)}")
    for e in entries:
        state = "present" if e.present else "missing"
        sha = (e.sha256[:12] + "...") if e.sha256 else "unknown"
        variant = f" variant {e.variant}" if e.variant else ""
        print(f"  {e.name:28s} {e.method:10s} {e.source:8s} {state:8s} sha256 {sha}{variant}")
    return 0


def _download(args) -> int:
    entry = download_weights(args.name, url=args.url, weights_dir_override=args.weights_dir, progressbar=True)
    print(f"{entry.name}: {entry.path} (sha256 {entry.sha256})")
    return 0


def _verify(args) -> int:
    results = verify_weights(args.name, weights_dir_override=args.weights_dir)
    if not results:
        print("no checkpoints present in the weights folder")
    bad = 0
    for r in results:
        print(f"  {r.name:28s} {'OK ' if r.ok else 'BAD'} {r.message}")
        bad += not r.ok
    return 1 if bad else 0


def _import(args) -> int:
    entry = import_checkpoint(
        args.path, name=args.name, method=args.method, base=args.base, variant=args.variant,
        weights_dir_override=args.weights_dir, force=args.force,
    )
    print(f"imported {entry.name} ({entry.source}) -> {entry.path} (sha256 {entry.sha256})")
    return 0
