import subprocess
import sys


def test_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "dmfnet.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.startswith("dmfnet ")
