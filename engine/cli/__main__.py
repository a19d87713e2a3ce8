"""``python -m engine.cli``: the ``vcell`` command."""

from engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
