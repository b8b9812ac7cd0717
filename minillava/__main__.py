"""``python -m minillava`` and the ``minillava`` command: the command line of cli.py.

The command starts here rather than in cli.py so that Ctrl-C is answered from its first instant: importing cli.py
loads NumPy, Pillow and tokenizers (a noticeable fraction of a second), and an interrupt then would otherwise end
in a traceback. (``import minillava`` itself loads nothing heavy: see __init__.py.)
"""

import sys


def main(argv=None) -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("\nminillava: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as cli.main answers an interrupt later on
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
