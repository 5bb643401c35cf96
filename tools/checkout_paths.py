"""Write this checkout's paths, absolute, for the salt-master run from it (bin/salt-master).

`master` names its paths relative to the repository root (root_dir, file_roots, pillar_roots,
module_dirs ...): every Salt CLI run from the root (through the Saltfile) resolves them there.
The salt-master daemon cannot: it changes its working directory to / before it serves, and its
own processes (request server, reactor) read the config file again from there, so a relative
path resolves against /. Salt has no option to resolve a path against the config file's
directory (root_dir itself is taken relative to the working directory), so this writes
`.salt/checkout.conf` with the same paths made absolute, and `master` includes it.

It also makes the master's runtime directories (pki, cache, job and proc dirs, sockets), as
salt-master does when it starts: `salt-run` and `salt-key` run before the first master start
would otherwise stop on a missing `<cachedir>/proc` with a raw traceback.

    python -m tools.checkout_paths [ROOT]     (ROOT defaults to this checkout)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATED = Path(".salt") / "checkout.conf"
# Options whose values are paths (or lists / per-environment lists of paths).
ROOTS_OPTIONS = ("file_roots", "pillar_roots")
PATH_OPTIONS = ("root_dir",)
HEADER = (
    "# Written by bin/salt-master (tools/checkout_paths.py) from `master`: the same paths, made\n"
    "# absolute for this checkout. Do not edit: it is rewritten at every start.\n"
)


def _absolute(root: Path, path: str) -> str:
    return path if os.path.isabs(path) else str(root / path)


def absolute_paths(config: dict, root: Path) -> dict:
    """The path options of a master config, made absolute against `root`."""
    paths = {}
    for key in PATH_OPTIONS:
        if isinstance(config.get(key), str):
            paths[key] = _absolute(root, config[key])
    for key in ROOTS_OPTIONS:
        if isinstance(config.get(key), dict):
            paths[key] = {
                env: [_absolute(root, path) for path in dirs or []]
                for env, dirs in config[key].items()
            }
    for key, value in config.items():
        if key.endswith("_dirs") and isinstance(value, list):
            paths[key] = [_absolute(root, path) for path in value]
    return paths


def write(root: Path = REPO_ROOT) -> Path:
    root = Path(root).resolve()
    config = yaml.safe_load((root / "master").read_text()) or {}
    target = root / GENERATED
    target.parent.mkdir(parents=True, exist_ok=True)
    body = HEADER + yaml.safe_dump(absolute_paths(config, root), default_flow_style=False)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=".checkout.")
    with os.fdopen(handle, "w") as out:
        out.write(body)
    os.replace(tmp, target)
    make_runtime_dirs(root)
    return target


def make_runtime_dirs(root: Path) -> None:
    """The directories salt-master makes at its start (salt.cli.daemons.Master), mode 0700."""
    import salt.config  # noqa: PLC0415 - only the CLI and bin/salt-master need Salt here

    opts = salt.config.master_config(str(root / "master"))
    pki = opts["pki_dir"]
    for path in (
        pki,
        *(os.path.join(pki, d) for d in ("minions", "minions_pre", "minions_denied")),
        *(os.path.join(pki, d) for d in ("minions_autosign", "minions_rejected")),
        opts["cachedir"],
        os.path.join(opts["cachedir"], "jobs"),
        os.path.join(opts["cachedir"], "proc"),
        opts["sock_dir"],
        opts["token_dir"],
        opts["syndic_dir"],
        opts["sqlite_queue_dir"],
    ):
        os.makedirs(path, mode=0o700, exist_ok=True)


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT))
