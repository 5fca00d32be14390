"""``python -m dmfnet``: the ``dmfnet`` command."""

from dmfnet.cli import run

if __name__ == "__main__":
    run()
