"""The README's shell blocks, for the tests that run them as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(containing):
    """The command lines (comments and blank lines dropped) of the README's ``sh`` block
    that contains ``containing``."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.M | re.S)
    block = next(b for b in blocks if containing in b)
    lines = (line.split("  #")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
