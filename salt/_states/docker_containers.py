"""
Containers, images and registry logins of the docker formula, on the Docker SDK
(salt/_modules/docker_containers.py does the Docker calls).

- ``running``: a container as pillar describes it (every ``docker_container.running``
  option, translated by Salt's own rules). A no-op run is one inspection: the container
  carries a label with the hash of its configuration; a different hash, image, network set,
  restart policy or resource limit (``docker update``), or a stopped container, is corrected
  and reported. A re-created container keeps its anonymous volumes; ``start: false`` creates
  and never starts. ``{secret: name}`` values come from pillar ``docker_secrets`` at run time
  and are masked in the output on every Salt version.
- ``image_present``: an image with a pull policy (``missing``, ``always``, ``never``), pulled
  with the credentials ``registry_login`` stored; ``test=True`` asks the registry whether the
  tag moved. ``load``/``build``/``sls`` images go to ``docker_image.present``.
- ``registry_login``: credentials checked against the registry before they are stored; a
  refused login fails naming the registry and leaves the stored ones as they were.
"""

import os

from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_containers"

DEFAULT_REGISTRY_CONFIG = "/root/.docker/config.json"


def __virtual__():
    return __virtualname__


def running(  # noqa: PLR0917 - Salt passes state arguments by name; this is the contract
    name,
    image,
    pull="missing",
    start=True,
    networks=None,
    force=False,
    shutdown_timeout=10,
    registry_config=DEFAULT_REGISTRY_CONFIG,
    docker_service=None,
    **kwargs,
):
    """
    Container ``name`` from ``image`` with the given ``docker_container.running`` options.

    pull
        What to do when ``image`` is not on the host: ``missing`` (default) and ``always``
        pull it, ``never`` fails. (The image state pulls ``always`` images every run.)
    start
        ``false``: create the container and never start it (data-only containers).
    force
        Re-create even when nothing changed (``watch`` requisites do this).
    shutdown_timeout
        Seconds the old container gets to stop when it is replaced.
    docker_service
        The Docker service, when the formula manages it (set by containers.sls): restarted
        when Docker holds a port for no container since a crash (``start_container``).
    """
    ret = _ret(name)
    used = []
    try:
        options = _resolve(_user_options(kwargs), used)
        desired = __salt__["docker_containers.spec"](image, options, networks=networks, start=start)
        desired["docker_service"] = docker_service
        how = {
            "pull": pull,
            "registry_config": registry_config,
            "force": force,
            "shutdown_timeout": shutdown_timeout,
        }
        _converge(ret, name, desired, how)
        restarted = __context__.pop("docker_containers.docker_restarted", None)
        if restarted:
            ret["changes"]["docker"] = restarted
    except Exception as error:  # every failure is one line (_failed)
        _failed(ret, error, f"container {name}")
    return __utils__["dockerhosts_secrets.masked"](ret, used)


def mod_watch(name, sfun=None, **kwargs):
    """A watched state changed: re-create the container."""
    if sfun != "running":
        return {**_ret(name), "result": False, "comment": f"watch is not supported by {sfun}"}
    kwargs["force"] = True
    return running(name, **kwargs)


def image_present(
    name, pull="missing", force=False, registry_config=DEFAULT_REGISTRY_CONFIG, **kwargs
):
    """
    Image ``name`` on the host by ``pull`` policy: ``missing`` (pull when absent), ``always``
    (pull every run: a moved tag is picked up, and the containers using it are re-created by
    their own state), ``never`` (fail when absent). ``force: true`` means ``always``.
    """
    options = _user_options(kwargs)
    if options.get("load") or options.get("build") or options.get("sls"):
        return __states__["docker_image.present"](name, force=force, **options)
    ret = _ret(name)
    policy = "always" if force else pull
    try:
        _image(ret, name, policy, registry_config)
    except Exception as error:  # every failure is one line (_failed)
        _failed(ret, error, f"image {name}")
    return ret


def registry_login(name, username, password, config_path=DEFAULT_REGISTRY_CONFIG):
    """
    Credentials for registry ``name`` in ``config_path`` (the file ``docker login`` writes;
    root-only). New or changed credentials are checked against the registry first.
    """
    ret = _ret(name)
    used = []
    try:
        username = _resolve(username, used)
        password = _resolve(password, used)
        _login(ret, name, str(username), str(password), config_path)
    except Exception as error:  # every failure is one line (_failed)
        _failed(ret, error, f"registry {name}")
    return __utils__["dockerhosts_secrets.masked"](ret, used)


def network_present(name, **options):
    """
    Network ``name`` with the docker SDK's ``create_network`` arguments (``ipam``: ``{driver,
    pool_configs: [{subnet, iprange, gateway, aux_addresses}], options}``). Created when
    missing; Docker cannot change a network in place, so one that differs fails, naming what
    differs (the formula never removes a network).
    """
    return _present(name, "network", _user_options(options))


def volume_present(name, **options):
    """
    Volume ``name`` (driver, driver_opts, labels). Created when missing; one with other
    settings fails, naming them: a volume holds data, the formula never removes it.
    """
    return _present(name, "volume", _user_options(options))


def _present(name, kind, options):
    ret = _ret(name)
    try:
        found = __salt__[f"docker_containers.find_{kind}"](name)
        if found is None:
            _create_object(ret, name, kind, options)
            return ret
        differs = __salt__["docker_containers.settings_drift"](found, options, kind)
        if differs:
            ret.update(
                result=False,
                comment=f"{kind} {name} exists with other settings ({', '.join(sorted(differs))}"
                f"): Docker cannot change them in place; remove it by hand (docker {kind} rm "
                f"{name}) or give pillar another name",
                changes={"differs": differs},
            )
        else:
            ret["comment"] = f"{kind} {name} is as configured"
    except Exception as error:  # every failure is one line (_failed)
        _failed(ret, error, f"{kind} {name}")
    return ret


def _create_object(ret, name, kind, options):
    ret["changes"] = {kind: {"old": None, "new": name}}
    if __opts__["test"]:
        ret.update(result=None, comment=f"{kind} {name} would be created")
        return
    __salt__[f"docker_containers.create_{kind}"](name, options)
    ret["comment"] = f"{kind} {name} created"


# --- secrets ----------------------------------------------------------------------------------


def _resolve(value, used):
    """``value`` with its ``{secret: name}`` references resolved from pillar docker_secrets
    (each value used is added to ``used``, to be masked in what the state returns)."""
    secrets = __pillar__.get("docker_secrets") or {}
    return __utils__["dockerhosts_secrets.resolve"](value, secrets, used)


# --- helpers -----------------------------------------------------------------------------------


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _user_options(kwargs):
    return {key: value for key, value in kwargs.items() if not key.startswith("__")}


def _failed(ret, error, what):
    """The state failed: one line saying what, on what and what to do (no traceback)."""
    if isinstance(error, KeyError):
        error = CommandExecutionError(f"{what}: {error.args[0] if error.args else error}")
    ret.update(result=False, comment=__salt__["docker_containers.failure"](error, what))


def _short(value):
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[7:19]
    return value[:12] if isinstance(value, str) else value


# --- images -----------------------------------------------------------------------------------


def _image(ret, image, policy, registry_config):
    current = __salt__["docker_containers.image_id"](image)
    if policy == "never" or (policy == "missing" and current):
        if current is None:
            raise CommandExecutionError(f"image {image} is not on this host and pull is never")
        ret["comment"] = f"image {image} is present"
        return
    if __opts__["test"]:
        _image_test(ret, image, current, registry_config)
        return
    new = __salt__["docker_containers.pull"](image, registry_config)
    if new != current:
        ret["changes"] = {"image": {"old": _short(current), "new": _short(new)}}
        ret["comment"] = f"pulled {image}" + (": the tag moved" if current else "")
    else:
        ret["comment"] = f"image {image} is up to date"


def _image_test(ret, image, current, registry_config):
    if current is None:
        ret.update(result=None, comment=f"image {image} would be pulled")
        ret["changes"] = {"image": {"old": None, "new": image}}
        return
    remote = __salt__["docker_containers.remote_digest"](image, registry_config)
    local = __salt__["docker_containers.local_digests"](image)
    local = [digest.partition("@")[2] for digest in local]
    if remote in local:
        ret["comment"] = f"image {image} is up to date"
        return
    __context__.setdefault("docker_containers.moved_images", set()).add(image)
    ret.update(result=None, comment=f"image {image} would be updated: the tag moved")
    ret["changes"] = {"image": {"old": _short(current), "new": remote}}


def _container_image(image, pull, registry_config):
    """Local id of ``image``, pulled here only if the image state did not (e.g. removed)."""
    current = __salt__["docker_containers.image_id"](image)
    if current is None and pull == "never":
        raise CommandExecutionError(f"image {image} is not on this host and pull is never")
    if current is None and not __opts__["test"]:
        current = __salt__["docker_containers.pull"](image, registry_config)
    return current


# --- containers -------------------------------------------------------------------------------


def _converge(ret, name, desired, how):
    if not __opts__["test"]:
        recovered = __salt__["docker_containers.recover"](name)
        if recovered:
            ret["changes"]["recovered"] = recovered
    image_id = _container_image(desired["image"], how["pull"], how["registry_config"])
    current = __salt__["docker_containers.inspect_container"](name)
    if current is None:
        _create(ret, name, desired)
        return
    found = __salt__["docker_containers.drift"](current, desired, image_id)
    if how["force"]:
        found["recreate"]["forced"] = True
    if desired["image"] in __context__.get("docker_containers.moved_images", ()):
        found["recreate"]["image"] = {"old": _short(current["Image"]), "new": "moved tag"}
    if found["recreate"]:
        _replace(ret, name, (current, desired), found["recreate"], how["shutdown_timeout"])
    elif found["update"]:
        _update(ret, name, (current, desired), found["update"], how["shutdown_timeout"])
    if found["start"] and not found["recreate"]:
        _start(ret, name, current, desired)
    if not ret["changes"]:
        ret["comment"] = f"container {name} is as configured"


def _create(ret, name, desired):
    if __opts__["test"]:
        ret.update(result=None, comment=f"container {name} would be created")
        ret["changes"]["container"] = {"old": None, "new": name}
        return
    new_id = __salt__["docker_containers.create"](name, desired)
    ret["changes"]["container"] = {"old": None, "new": _short(new_id)}
    started = " and started" if desired["start"] else " (not started: start is false)"
    ret["comment"] = f"container {name} created{started}"


def _reasons(reasons):
    shown = {}
    for key, change in reasons.items():
        if key == "config":
            shown[key] = "pillar configuration changed" if change["old"] else "not made by us"
        elif isinstance(change, dict):
            shown[key] = {"old": _short(change["old"]), "new": _short(change["new"])}
        else:
            shown[key] = change
    return shown


def _replace(ret, name, pair, reasons, shutdown_timeout):
    current, desired = pair
    # Refused (data would be detached) before anything changes, in test mode too.
    carried = __salt__["docker_containers.carried_volumes"](name, current, desired)
    ret["changes"]["recreated"] = _reasons(reasons)
    if __opts__["test"]:
        ret.update(result=None, comment=f"container {name} would be re-created (data kept)")
        return
    new_id = __salt__["docker_containers.replace"](name, current, desired, shutdown_timeout)
    ret["changes"]["container"] = {"old": _short(current["Id"]), "new": _short(new_id)}
    if carried:
        ret["changes"]["volumes_kept"] = [item.split(":")[0][:12] for item in carried]
    ret["comment"] = f"container {name} re-created"


def _update(ret, name, pair, update, shutdown_timeout):
    current, desired = pair
    args = __salt__["docker_containers.update_args"](update, desired)
    if args is None:
        _replace(ret, name, pair, update, shutdown_timeout)
        return
    ret["changes"]["updated"] = update
    if __opts__["test"]:
        ret.update(result=None, comment=f"container {name} would be updated in place")
        return
    __salt__["docker_containers.client"]().update_container(current["Id"], **args)
    ret["comment"] = f"container {name} updated in place"


def _start(ret, name, current, desired):
    old = current["State"].get("Status")
    ret["changes"]["state"] = {"old": old, "new": "running"}
    if __opts__["test"]:
        ret.update(result=None, comment=f"container {name} would be started")
        return
    if current["State"].get("Paused"):
        __salt__["docker_containers.client"]().unpause(current["Id"])
    else:
        __salt__["docker_containers.start_container"](current["Id"], name, desired)
    ret["comment"] = f"container {name} started (was {old})"


# --- registry logins --------------------------------------------------------------------------


def _login(ret, registry, username, password, config_path):
    stored = __salt__["docker_containers.stored_auth"](registry, config_path)
    _restrict(ret, config_path)
    if stored == {"username": username, "password": password}:
        ret["comment"] = f"credentials for {registry} already stored"
        return
    # Refused credentials fail here, before the stored ones are touched.
    __salt__["docker_containers.login"](registry, username, password)
    mask = __utils__["dockerhosts_secrets.masked"](password, [password])
    ret["changes"]["credentials"] = {"registry": registry, "username": username, "password": mask}
    if __opts__["test"]:
        ret.update(result=None, comment=f"credentials for {registry} verified, would be stored")
        return
    __salt__["docker_containers.store_auth"](registry, username, password, config_path)
    ret["comment"] = f"credentials for {registry} verified and stored in {config_path}"


def _restrict(ret, config_path):
    """The credentials file is root's alone: fix a wider mode (reported)."""
    if not os.path.exists(config_path):
        return
    mode = os.stat(config_path).st_mode & 0o777
    if mode != 0o600:
        if not __opts__["test"]:
            os.chmod(config_path, 0o600)
        ret["changes"]["mode"] = {"old": oct(mode), "new": "0o600"}
