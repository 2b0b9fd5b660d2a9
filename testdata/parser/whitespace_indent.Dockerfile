   FROM busybox
	RUN echo indented with a tab
        ENV   A=1   B=2
  # indented comment
CMD      ["x"]
