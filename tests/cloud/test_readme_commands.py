"""
The README's "Run it locally" block, run as written (each line of its ``sh`` block, read from
README.md itself) in a fresh copy of the checkout on which no master has ever run: bin/local-ec2
in the background, then the exports and the salt-cloud commands in a shell, each exiting 0, with
EC2 holding the node after ``-p`` and none after ``-d``. Then the volume the dataserver keeps is
purged with the command its destroy prints.
"""

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from tools import processes
from tools.checkout_master import copy_checkout
from tools.readme import readme_block

pytestmark = pytest.mark.cloud

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path):
    root = copy_checkout(tmp_path / "repo")
    for venv in (".venv", ".venv-salt3007"):
        (root / venv).symlink_to(os.path.realpath(REPO_ROOT / venv))
    return root


def test_run_it_locally_block_runs_as_written(checkout):
    lines = readme_block("bin/local-ec2")
    assert lines[0].startswith("bin/local-ec2"), lines
    log = checkout / "local-ec2.out"
    with log.open("wb") as out:
        endpoint = subprocess.Popen(
            shlex.split(lines[0]), cwd=checkout, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90
        while "AWS_ENDPOINT_URL" not in log.read_text(errors="replace"):
            assert endpoint.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        exports = [line for line in lines[1:] if line.startswith("export ")]
        env = dict(os.environ)
        for export in exports:
            env.update(item.split("=", 1) for item in shlex.split(export)[1:])
        ec2 = boto3.client(
            "ec2",
            region_name="eu-west-1",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        outputs = []
        for line in lines[1:]:
            if line.startswith("export "):
                continue
            ran = subprocess.run(
                ["bash", "-ec", line],
                check=False,
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
            )
            assert ran.returncode == 0, f"{line}\n{ran.stdout[-2000:]}{ran.stderr[-2000:]}"
            assert "Traceback" not in ran.stdout + ran.stderr, line
            outputs.append(ran.stdout + ran.stderr)
            words = line.split()
            if "-p" in words:  # what EC2 holds after -p <profile> <name>
                name = words[words.index("-p") + 2]
                running = ec2.describe_instances(
                    Filters=[
                        {"Name": "tag:Name", "Values": [name]},
                        {"Name": "instance-state-name", "Values": ["pending", "running"]},
                    ]
                )["Reservations"]
                assert len(running) == 1, line
        live = ec2.describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )["Reservations"]
        assert live == [], "the block's -d left an instance running"
        purge = re.search(r"salt-cloud -f purge_volume aws volume_id=(vol-\w+)", outputs[-1])
        assert purge, outputs[-1]
        ran = subprocess.run(
            [".venv/bin/salt-cloud", "-f", "purge_volume", "aws", f"volume_id={purge[1]}"],
            check=False,
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert purge[1] not in [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]]
    finally:
        endpoint.send_signal(signal.SIGINT)  # Ctrl-C
        processes.wait_or_kill(endpoint, 30)
