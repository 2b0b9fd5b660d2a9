FROM busybox
MAINTAINER someone <a@b>
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
SHELL not json
