"""What a service process sets before gRPC's core starts: imported first by each service's __main__."""

import os


def prepare_process() -> None:
    """gRPC core logs to stderr in its own plain-text format (e.g. every refused TLS handshake at INFO);
    keep it to errors so the process's output stays JSON lines. GRPC_VERBOSITY set by the user wins."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
