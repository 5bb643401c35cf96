"""This checkout's Salt pieces as tests and tools use them: a loader module loaded by path
(outside Salt's loader), the repository `master` file's identity and pillar settings, Salt's
CLIs run from a config directory, and a masterless salt-call over the checkout's salt/ tree."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
# The repository's `master` settings a test master takes over (paths made absolute).
MASTER_SETTINGS = (
    "module_dirs",
    "ext_pillar",
    "on_demand_ext_pillar",
    "minion_data_cache",
    "pillar_cache",
    "enforce_mine_cache",
)


def load_module(kind, name):
    """salt/_<kind>/<name>.py of this checkout as a module, as Salt's loader reads it: alone,
    its dunders (``__salt__``, ``__opts__`` ...) left for the caller to set."""
    path = REPO_ROOT / "salt" / f"_{kind}" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"repo_{kind}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repository_master_settings(repo_root=REPO_ROOT):
    """What the repository's `master` sets for identity and pillar (module_dirs, the
    node_class ext_pillar, caches off), paths made absolute."""
    config = yaml.safe_load((Path(repo_root) / "master").read_text())
    settings = {key: config[key] for key in MASTER_SETTINGS}
    settings["module_dirs"] = [str(Path(repo_root) / path) for path in settings["module_dirs"]]
    return settings


def run_cli(program, args, *, cwd, env=None, timeout=300):
    """Run a Salt CLI (salt, salt-run, salt-cloud ...) of this Python environment from
    ``cwd``; its CompletedProcess (text) with ``seconds``, the time it took."""
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN_DIR / program), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result.seconds = time.monotonic() - started
    return result


def local_salt_call(config_dir, minion_id, repo_root=REPO_ROOT):
    """A masterless minion (config in ``config_dir``) serving the checkout's salt/ tree with no
    pillar. Returns ``call(*args)`` -> ``(returncode, its "local" answer or None, output)``."""
    config = {
        "id": minion_id,
        "file_client": "local",
        "root_dir": str(config_dir),
        "file_roots": {"base": [str(Path(repo_root) / "salt")]},
        "pillar_roots": {"base": [str(Path(config_dir) / "no-pillar")]},
    }
    (Path(config_dir) / "minion").write_text(yaml.safe_dump(config))

    def call(*args):
        proc = run_cli(
            "salt-call",
            ["-c", str(config_dir), "--local", "--out", "json", *args],
            cwd=None,
            timeout=None,
        )
        try:
            answer = json.loads(proc.stdout)["local"]
        except (ValueError, KeyError, TypeError):  # no JSON: the output tells why
            answer = None
        return proc.returncode, answer, proc.stdout + proc.stderr

    return call
