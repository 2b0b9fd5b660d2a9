FROM busybox
HEALTHCHECK NONE
HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/ || exit 1
HEALTHCHECK --start-period=1m30s --start-interval=500ms --retries=3 cmd ["/bin/check", "--quick"]
HEALTHCHECK --interval=0 --timeout=1.5s --retries=0 CMD true
HEALTHCHECK none
