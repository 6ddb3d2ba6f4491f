"""Domain apps that compose the services: each keeps its own state and serves a web page."""
