FROM busybox
HEALTHCHECK --interval=5s --timeout=1m30s --start-period=0s --start-interval=1ms --retries=3 CMD true
HEALTHCHECK NONE
HEALTHCHECK --interval=-1s CMD x
HEALTHCHECK --retries=x CMD x
