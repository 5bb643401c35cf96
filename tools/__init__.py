"""Tools for running and testing this repository on one machine, with no AWS account:
a local EC2 endpoint (moto), throwaway qemu VM nodes, the local stack the demo and the e2e
tier share, private dockerds, GPG keys, an sshd, images without a registry, and the harness
that runs the real salt-cloud CLI. Used by bin/*, bench/* and tests/ (tests import tools,
never the reverse). Run from the repository root: `python -m tools.<module>`."""
