"""polar: program-of-layers inference on a frozen pretrained LLM."""

import os

# MLflow's usage telemetry thread sets and unsets an environment variable while it runs; any other thread that
# reads the environment meanwhile (requests does, for proxies, on every call to a tracking server) can fail
# with KeyError('_MLFLOW_TELEMETRY_SESSION_ID'). It also sends data out. Off unless the user decides otherwise.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
