"""
States for the ``docker`` formula that Salt's own docker/mount states do not cover.

- ``container_running``: ``docker_container.running`` with ``{secret: name}`` references
  resolved from pillar ``docker_secrets`` only at run time (so secrets never sit in the
  rendered SLS) and every secret value masked in the returned comment and changes (3008's
  ``no_log`` masks output, 3007 ignores it; this works on both).
- ``registry_login``: the docker client config entry ``docker login`` would write, with the
  password taken from a secret; the password never appears in the output.
- ``data_root_moved``: before the new volume is mounted at /var/lib/docker, move what is
  there into it once (stopping Docker first); never deletes anything.
- ``storage_driver_supported``: stop on devicemapper with an Engine that no longer has it.
"""

import base64
import json
import os
import tempfile

__virtualname__ = "docker_host"

MASK = "**********"


def __virtual__():
    return __virtualname__


def _secrets():
    return __pillar__.get("docker_secrets") or {}


def _resolve(value, secrets, used):
    if isinstance(value, dict):
        if set(value) == {"secret"}:
            secret = secrets.get(value["secret"])
            if secret is None:
                raise KeyError(value["secret"])
            used.append(str(secret))
            return secret
        return {key: _resolve(item, secrets, used) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, secrets, used) for item in value]
    return value


def _mask(value, hidden):
    if isinstance(value, str):
        for secret in hidden:
            if secret:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {_mask(key, hidden): _mask(item, hidden) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(item, hidden) for item in value]
    return value


def container_running(name, **kwargs):
    """
    ``docker_container.running`` with secret references resolved and masked.

    .. code-block:: yaml

        postgres:
          docker_host.container_running:
            - image: postgres:16
            - environment:
                POSTGRES_PASSWORD: {secret: postgres_password}
    """
    used = []
    try:
        options = _resolve(kwargs, _secrets(), used)
    except KeyError as missing:
        return {
            "name": name,
            "result": False,
            "changes": {},
            "comment": f"secret {missing} is not in pillar docker_secrets",
        }
    options = {key: value for key, value in options.items() if not key.startswith("__")}
    ret = __states__["docker_container.running"](name, **options)
    # Longest first, so a secret containing another is masked whole.
    return _mask(ret, sorted(set(used), key=len, reverse=True))


def _load_config(path):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def registry_login(name, username, password, config_path="/root/.docker/config.json"):
    """
    Make the docker client config at ``config_path`` hold credentials for registry ``name``
    (what ``docker login`` writes; image pulls by the docker SDK read it).
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        password = _resolve(password, _secrets(), [])
    except KeyError as missing:
        ret.update(result=False, comment=f"secret {missing} is not in pillar docker_secrets")
        return ret
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    config = _load_config(config_path)
    if config.get("auths", {}).get(name, {}).get("auth") == auth:
        ret["comment"] = f"credentials for {name} already present"
        return ret
    ret["changes"] = {"registry": name, "username": username, "password": MASK}
    if __opts__["test"]:
        ret.update(result=None, comment=f"credentials for {name} would be written")
        return ret
    config.setdefault("auths", {})[name] = {"auth": auth}
    directory = os.path.dirname(config_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(config, out, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, config_path)
    ret["comment"] = f"credentials for {name} written to {config_path}"
    return ret


def _mounted_device(mountpoint):
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and fields[1] == mountpoint:
                return fields[0]
    return None


def data_root_moved(name, device, fstype, services=("docker.socket", "docker")):
    """
    If ``name`` (/var/lib/docker) is not yet a mountpoint and has content, stop ``services``
    (Docker must not write there meanwhile) and move that content into ``device``.
    Run before ``mount.mounted``.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if _mounted_device(name) is not None:
        ret["comment"] = f"{name} is already a mountpoint"
        return ret
    entries = os.listdir(name) if os.path.isdir(name) else []
    if not entries:
        ret["comment"] = f"{name} is empty: nothing to move"
        return ret
    if __opts__["test"]:
        ret.update(result=None, comment=f"{len(entries)} entries of {name} would move to {device}")
        return ret
    for unit in services:
        if __salt__["service.available"](unit) and __salt__["service.status"](unit):
            __salt__["service.stop"](unit)
    staging = tempfile.mkdtemp(prefix="docker-data-root-")
    mounted = __salt__["mount.mount"](staging, device, fstype=fstype)
    if mounted is not True:
        os.rmdir(staging)
        ret.update(result=False, comment=f"cannot mount {device} on {staging}: {mounted}")
        return ret
    try:
        moved = __salt__["docker_host.move_data_root"](name, staging)
    finally:
        __salt__["mount.umount"](staging, device=device)
        os.rmdir(staging)
    ret["changes"] = {"moved": moved, "to": device}
    ret["comment"] = f"moved {len(moved)} entries of {name} into {device}"
    return ret


def storage_driver_supported(name):
    """Fail when storage driver ``name`` is not available in the installed Docker Engine."""
    version = __salt__["docker_host.engine_version"]()
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        __salt__["docker_host.check_storage_driver"](name, version)
    except Exception as error:
        ret.update(result=False, comment=str(error))
        return ret
    ret["comment"] = f"{name} works with Docker Engine {version}"
    return ret
