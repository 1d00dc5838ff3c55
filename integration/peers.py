"""What the peer servers of the benchmark (Debian's Prosody and ejabberd) share: installing the Debian
package when root, asking dpkg for its version, and handing the run directory to the package's user.

The servers themselves run through `integration.loadgen.process.running` (pinned, awaited, stopped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class PeerUnavailable(RuntimeError):
    """A peer server is not installed and cannot be (not root, or apt-get failed)."""


def ensure_package(package: str, command: str) -> str:
    """The path of `command`, installing Debian's `package` first when it is missing and we are root."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0:
        raise PeerUnavailable(f"{command} is not installed (apt-get install {package}, as root)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(step, env=environment, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PeerUnavailable(f"{' '.join(step)} failed: {result.stderr.strip()[-500:]}")
    found = shutil.which(command)
    if not found:
        raise PeerUnavailable(f"apt-get installed {package} but there is no {command} command")
    return found


def package_version(package: str) -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown version"


def run_as(package_user: str) -> str | None:
    """The user to run a packaged server as: its own when we are root (they refuse or should not run as
    root), else ourselves (None)."""
    return package_user if os.geteuid() == 0 else None


def copy_certificate(directory: Path, cert: Path, key: Path) -> tuple[Path, Path]:
    """A copy of the certificate and key inside `directory`, where the server's user can read them."""
    (directory / "tls").mkdir(parents=True, exist_ok=True)
    return (
        Path(shutil.copy(cert, directory / "tls" / "cert.pem")),
        Path(shutil.copy(key, directory / "tls" / "key.pem")),
    )


def hand_over(directory: Path, user: str | None) -> None:
    """Give `directory` and everything in it to `user` (nothing to do when we run as ourselves)."""
    if user is None:
        return
    for path in [directory, *directory.rglob("*")]:
        shutil.chown(path, user, user)
