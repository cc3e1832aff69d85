"""Thin shim: `python cli.py ...` is the same as `moebench ...`."""

from moebench.cli import main

if __name__ == "__main__":
    main()
