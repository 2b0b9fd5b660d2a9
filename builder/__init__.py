"""Dockerfile front end, build plan, sandbox and step executors."""
