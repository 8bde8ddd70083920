"""``steerjax data list`` and ``steerjax data download``: the pinned data files and where they are."""

from __future__ import annotations

import os
import pathlib

from steerjax.data import download as dl
from steerjax.data import manifest, store
from steerjax.errors import DataError

# a pinned file -> a file the loaders read in its place (steerjax's earlier JSON extraction)
READ_INSTEAD = {"steering-bench/persona_prompts.py": "steering-bench/persona_prompts.json"}


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="the datasets: list them, download them",
                          description="The data steerjax reads, pinned to a commit of each upstream repository "
                                      "and checked by size and git blob SHA-1. Loaders read $STEERJAX_DATA when it "
                                      "is set (nothing is downloaded then); otherwise they download each file "
                                      "they need into the cache ($STEERJAX_CACHE/data, default "
                                      "~/.cache/steerjax/data) on first use, from GitHub's raw-file host or "
                                      "$STEERJAX_DATA_MIRROR.")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="the sources: what is present, sizes, licences",
                            description="List the data sources (repository and commit, files present, sizes, "
                                        "licence) in the data directory ($STEERJAX_DATA, or the cache).")
    ls.add_argument("--to", metavar="DIR", default=None,
                    help="look in this data directory instead (default: $STEERJAX_DATA, else the cache)")
    ls.add_argument("--verify", action="store_true", help="check every present file's SHA-1 too (reads them all)")
    ls.set_defaults(run=run_list)

    get = actions.add_parser("download", help="download sources (default: all) and verify them",
                             description="Download whole sources into the cache (or --to DIR), keeping the "
                                         "files already there that verify; a rerun continues an interrupted one. "
                                         f"Sources: {', '.join(manifest.SOURCES)}.")
    get.add_argument("names", nargs="*", metavar="NAME", help="sources to download (default: all; see data list)")
    get.add_argument("--to", metavar="DIR", default=None,
                     help="the data directory to fill (default: the cache; required when STEERJAX_DATA is set). "
                          "Point STEERJAX_DATA at it afterwards to use it")
    get.add_argument("--force", action="store_true", help="download every file again, even those that verify")
    get.set_defaults(run=run_download)


def run_list(args) -> int:
    root, why = _target(args.to, listing=True)
    print(f"data directory: {root} ({why})")
    if store.data_override() is None or args.to is not None:
        print(f"downloads from: {dl.mirror_base()}/OWNER/REPO/COMMIT/PATH")
    for name in dl.sources():
        spec = manifest.SOURCES[name]
        files = dl.source_files(name)
        present, damaged, instead, have_bytes = [], [], [], 0
        for f in files:
            path = pathlib.Path(root, *f.local.split("/"))
            wrong = dl.problem(path, f, check_sha=args.verify) if path.is_file() else "missing"
            if wrong is None:
                present.append(f)
                have_bytes += path.stat().st_size
            elif wrong != "missing":
                damaged.append(f"{f.local} ({wrong})")
            elif f.local in READ_INSTEAD and pathlib.Path(root, READ_INSTEAD[f.local]).is_file():
                instead.append(f"{READ_INSTEAD[f.local]} is read instead of {f.local}")
        known = sum(f.size for f in files if f.size >= 0)
        unknown = sum(f.size < 0 for f in files)
        print(f"\n{name}  {spec['repo']} @ {spec['commit'][:12]}")
        print(f"  {spec['description']}")
        size = f"{_mb(have_bytes)} present of {_mb(known)}" + (f" + {unknown} file(s) of unrecorded size"
                                                                 if unknown else "")
        checked = ", SHA-1 checked" if args.verify else ""
        print(f"  files: {len(present)} of {len(files)} present{checked}; {size}")
        for line in damaged:
            print(f"  damaged: {line}: run steerjax data download {name} to replace it")
        for line in instead:
            print(f"  note: {line}")
        if spec["licence"]:
            held = [f.local + ("" if f in present else " (not downloaded yet)") for f in dl.licence_files(name)]
            print(f"  licence: {spec['licence_name']}: {', '.join(held)}")
        else:
            print(f"  licence: {spec['licence_name']}")
    return 0


def run_download(args) -> int:
    names = list(dict.fromkeys(args.names)) or dl.sources()
    for name in names:
        dl.source_files(name)  # an unknown name fails before anything is fetched
    root, why = _target(args.to, listing=False)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data directory {root} ({e.strerror or e}): choose a writable "
                        "--to DIR, or set STEERJAX_CACHE to a writable directory") from e
    print(f"data directory: {root} ({why})", flush=True)
    for name in names:
        done = dl.download([name], root, force=args.force)
        fetched = sum(new for _, new in done)
        spec = manifest.SOURCES[name]
        licence = (", ".join(f.local for f, _ in done if f.licence) or "no file") + f": {spec['licence_name']}"
        print(f"{name}: {len(done)} files, {fetched} downloaded, {len(done) - fetched} already verified; "
              f"licence {licence}", flush=True)
    if args.to is not None and store.data_override() != root:
        print(f"to use it: export STEERJAX_DATA={root}")
    return 0


def _target(to: str | None, *, listing: bool) -> tuple[pathlib.Path, str]:
    """The data directory a command works on, and why."""
    if to is not None:
        root = pathlib.Path(to).expanduser()
        if listing and not root.is_dir():
            raise DataError(f"--to {to} is not a directory: give a data directory (one that steerjax data "
                            "download --to filled, or STEERJAX_DATA's)")
        return root, "--to"
    override = store.data_override()
    if override is None:
        return store.data_cache(), "the download cache: STEERJAX_DATA is unset, so files are downloaded on first use"
    if listing:
        return override, "STEERJAX_DATA: nothing is downloaded"
    raise DataError(f"STEERJAX_DATA is set ({os.environ.get(store.DATA_ENV)}), so steerjax reads its data from "
                    "there and downloads nothing: pass --to DIR to download into a directory (--to "
                    f"\"$STEERJAX_DATA\" fills that one), or unset STEERJAX_DATA to download into the cache "
                    f"{store.data_cache()}")


def _mb(n: int) -> str:
    """``n`` bytes for people: B, kB or MB."""
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"
