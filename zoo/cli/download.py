"""Download published Keras weights into the cache (no torch needed):
python scripts/download.py NAME... | --all [--revision REV]
(ZOO_WEIGHTS_URL: hf://org/repo[@rev] or a static https:// / file:// release; HF_TOKEN,
HF_HUB_OFFLINE / ZOO_OFFLINE, ZOO_CACHE_DIR for static releases)"""
import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="catalogue names as published")
    p.add_argument("--all", action="store_true", help="every model in the release index")
    p.add_argument("--saved-model", action="store_true", help="also fetch saved_model.tar.gz")
    p.add_argument("--revision", help="branch, tag or commit of an hf:// release (overrides "
                                      "the @revision of ZOO_WEIGHTS_URL)")
    args = p.parse_args(argv)
    if bool(args.names) == args.all:
        p.error("give model names or --all (not both)")

    from zoo import hub
    try:
        index = hub.load_index(revision=args.revision) if args.all else None
        names = sorted(index["models"]) if args.all else args.names
        files = hub.REQUIRED_FILES + (("saved_model.tar.gz",) if args.saved_model else ())
        for name in names:
            print(f"{name}: {hub.fetch(name, files, revision=args.revision)}")
    except hub.DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
