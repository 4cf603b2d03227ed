"""Resolve what the local stack runs (Kafka's jars, the schema registry) with Maven, once.

Maven Central is the one place both come from; the cache folder keeps them between runs, and a
``.complete`` marker says a resolution finished (a half-resolved folder is removed).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from devstack.processes import StackError, run_checked

log = logging.getLogger(__name__)


def require_tool(name: str, fix: str) -> None:
    """Raise StackError naming ``fix`` when ``name`` is not on PATH."""
    if shutil.which(name) is None:
        raise StackError(f"`{name}` not found on PATH: {fix}")


def resolve_once(target: Path, pom: str, goal: str, properties: Sequence[str], what: str) -> bool:
    """Run ``mvn <goal>`` on the packaged ``pom`` into ``target`` unless it is complete already.

    Returns True when Maven ran. ``properties`` are ``-D`` options; ``what`` names the download
    in logs and errors.

    Raises:
        StackError: no ``java``/``mvn`` on PATH, or Maven failed (``target`` is then removed).
    """
    marker = target / ".complete"
    if marker.exists():
        return False
    require_tool("java", "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)")
    require_tool("mvn", f"install Maven (apt-get install maven) to fetch {what} once")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with resources.as_file(resources.files("devstack") / "resources" / pom) as pom_path:
        log.info("resolving %s with Maven into %s", what, target)
        try:
            run_checked(
                ["mvn", "-B", "-q", "-f", str(pom_path), goal, *(f"-D{p}" for p in properties)],
                what=f"Maven (resolving {what}; Maven Central must be reachable the first time)",
            )
        except StackError:
            shutil.rmtree(target, ignore_errors=True)
            raise
    marker.write_text(what)
    return True
