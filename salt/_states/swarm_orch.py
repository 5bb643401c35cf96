"""
Orchestration states for a class's swarm (salt/orch/swarm.sls), run on the master by
``salt-run state.orchestrate``: each step is the ``swarm`` runner's function of that name.

Unlike ``salt.runner`` (which reports every run as a change and skips the runner under
``test=True``), these pass the runner's own result, changes and comment through, so a
converged cluster shows no changes and ``test=True`` shows the plan.
"""

__virtualname__ = "swarm_orch"


def __virtual__():
    if __opts__.get("__role") != "master":
        return (False, "swarm_orch states run on the master (salt-run state.orchestrate)")
    return __virtualname__


def _step(step, name):
    outcome = __salt__["saltutil.runner"](
        f"swarm.{step}", class_name=name, test=bool(__opts__.get("test"))
    )
    if not isinstance(outcome, dict) or "result" not in outcome:
        return {
            "name": name,
            "result": False,
            "changes": {},
            "comment": f"swarm.{step} failed: {outcome}",
        }
    return {
        "name": name,
        "result": outcome["result"],
        "changes": outcome.get("changes") or {},
        "comment": outcome.get("comment", ""),
    }


def managers(name):
    """Class ``name``'s swarm exists and has its managers (runner swarm.managers)."""
    return _step("managers", name)


def workers(name):
    """Every other node of class ``name`` is in its swarm as a worker (swarm.workers)."""
    return _step("workers", name)


def cluster(name):
    """Nodes, networks, secrets, configs, services of class ``name`` (swarm.cluster)."""
    return _step("cluster", name)
