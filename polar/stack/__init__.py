"""The team stack: PostgreSQL behind the Prefect server and the MLflow tracking server, and an S3-compatible
object store (SeaweedFS) for MLflow's artifacts and the DVC remote, started and stopped by one command.

``polar stack up`` starts it locally (loopback by default, data in one folder that survives a restart);
``polar stack env`` prints what users and workers export to use it. See README, "Team set-up".
"""

from polar.stack.config import Credentials, Stack, load_stack, stack_dir
from polar.stack.services import SERVICES, Health, down, health, up

__all__ = ["SERVICES", "Credentials", "Health", "Stack", "down", "health", "load_stack", "stack_dir", "up"]
