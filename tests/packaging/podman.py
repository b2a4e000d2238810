"""Building and running the Containerfile with Debian's podman, for tests/packaging.

What a test needs besides podman itself, each found here or skipped with the reason:
- a base image. Docker Hub's python image is not reachable from the machines this suite runs
  on, so by default contrib/container/debian-base.sh makes one from Debian's mirror (once:
  podman keeps it). BRIDGE_TEST_BASE_IMAGE names another one, e.g.
  docker.io/library/python:3.11-slim-bookworm where that registry is reachable.
- options under which a container can run here. A plain `podman run` fails in some
  sandboxes (this project's own machines among them): without CAP_SYS_RESOURCE podman's
  default rlimits cannot be set, and crun refuses cgroup v1 with controllers on the unified
  hierarchy, where runc copes. The first set of options that runs the base image is used for
  the build and the test; none of them changes what the image is.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE = "localhost/bridge-base:bookworm"
IMAGE = "localhost/matrix-hub-bridge:test"
# The build's pip reaches PyPI; where that goes through a TLS-inspecting proxy, only the
# machine's own trust store knows its CA. A public CA bundle is harmless elsewhere.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def podman(*args: str, timeout: float = 120, check: bool = False,
           log: Path | None = None) -> subprocess.CompletedProcess[str]:
    if log is None:
        result = subprocess.run(["podman", *args], capture_output=True, text=True,
                                timeout=timeout)
    else:  # long output (a build) goes to a file, read back on failure
        with log.open("w") as out:
            result = subprocess.run(["podman", *args], stdout=out, stderr=subprocess.STDOUT,
                                    text=True, timeout=timeout)
        result.stdout = log.read_text()
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n"
                             + (result.stdout + (result.stderr or ""))[-4000:])
    return result


def require_podman() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("the container test runs rootful podman and needs root "
                    "(rootless podman needs subuid ranges this suite does not set up)")


def base_image(log_dir: Path) -> str:
    """The base image to build on: made once from Debian's mirror, then reused."""
    wanted = os.environ.get("BRIDGE_TEST_BASE_IMAGE", DEFAULT_BASE)
    if podman("image", "exists", wanted).returncode == 0:
        return wanted
    if wanted != DEFAULT_BASE:
        pull = podman("pull", wanted, timeout=600)
        if pull.returncode != 0:
            pytest.skip(f"BRIDGE_TEST_BASE_IMAGE={wanted} cannot be pulled: "
                        f"{pull.stderr.strip()[-300:]}")
        return wanted
    if shutil.which("mmdebstrap") is None:
        pytest.skip(f"no base image {DEFAULT_BASE} and no mmdebstrap to make one from Debian's "
                    "mirror (apt-get install mmdebstrap; .ci/run installs it), and "
                    "BRIDGE_TEST_BASE_IMAGE is not set")
    log = log_dir / "debian-base.log"
    with log.open("w") as out:
        made = subprocess.run([str(REPO / "contrib/container/debian-base.sh"), DEFAULT_BASE],
                              stdout=out, stderr=subprocess.STDOUT, timeout=900)
    if made.returncode != 0:
        raise AssertionError("contrib/container/debian-base.sh failed:\n"
                             + log.read_text()[-4000:])
    return DEFAULT_BASE


def runtime_options(base: str) -> list[str]:
    """The first set of podman options under which a container of `base` runs here."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Limits no higher than this process's own, which need no privilege to set.
    limits = [f"--ulimit=nofile={soft}:{soft}", "--ulimit=nproc=4096:4096"]
    candidates = [[], limits]
    if shutil.which("runc"):
        candidates.append(["--runtime=runc", *limits])
    errors = []
    for options in candidates:
        probe = podman("run", "--rm", *options, base, "true")
        if probe.returncode == 0:
            return options
        errors.append(f"[{' '.join(options) or 'no options'}]: {probe.stderr.strip()[-300:]}")
    pytest.skip("podman cannot run a container on this machine: " + "; ".join(errors))


def build(base: str, options: list[str], log: Path) -> str:
    """Build the Containerfile as the README says, on `base`; returns the image name."""
    args = ["build", "--format", "docker", *options, "--build-arg", f"BASE_IMAGE={base}",
            "-t", IMAGE]
    if HOST_CA_BUNDLE.is_file():
        args += ["-v", f"{HOST_CA_BUNDLE}:/run/host-ca.crt:ro",
                 "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    before = podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    podman(*args, str(REPO), timeout=1200, check=True, log=log)
    # The image of the previous build lost its tag: drop it, or every change of the code
    # leaves a few hundred MB behind (the build stage's layers stay: they are the cache).
    if before and before != podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip():
        podman("rmi", before)
    return IMAGE
