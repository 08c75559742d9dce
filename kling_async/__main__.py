"""``python -m kling_async``: the same command line as ``kling-async``."""

from ._cli import main

if __name__ == "__main__":
    main()
