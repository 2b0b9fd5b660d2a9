FROM busybox
MAINTAINER Jane Doe <jane@example.com>
STOPSIGNAL SIGKILL
STOPSIGNAL 9
USER app:app
USER ${UID}:${GID}
WORKDIR /srv/my app
WORKDIR relative/$DIR
