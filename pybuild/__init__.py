"""pybuild: a daemonless builder turning a Dockerfile and a context into an OCI image."""
__version__ = "0.1.0"
