FROM busybox
VOLUME /data
VOLUME /a /b   /c
VOLUME ["/var/log", "/var/db"]
VOLUME [" /trimmed "]
