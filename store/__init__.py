"""Content-addressed image store: an OCI image layout plus private folders."""
