"""Download published Keras weights into the cache (no torch needed):
python scripts/download.py NAME... | --all   (ZOO_WEIGHTS_URL, ZOO_CACHE_DIR, ZOO_OFFLINE)"""
import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="catalogue names as published")
    p.add_argument("--all", action="store_true", help="every model in the release index")
    p.add_argument("--saved-model", action="store_true", help="also fetch saved_model.tar.gz")
    args = p.parse_args(argv)
    if bool(args.names) == args.all:
        p.error("give model names or --all (not both)")

    from zoo import hub
    try:
        names = sorted(hub.load_index().get("models", {})) if args.all else args.names
        files = hub.REQUIRED_FILES + (("saved_model.tar.gz",) if args.saved_model else ())
        for name in names:
            print(f"{name}: {hub.fetch(name, files)}")
    except hub.DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
