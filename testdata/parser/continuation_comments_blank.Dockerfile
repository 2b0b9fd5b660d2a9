FROM busybox
RUN apt-get update && \
    # install the tools
    apt-get install -y \

      curl \
  # another comment, indented
      git
RUN echo \
# comment directly after
done
