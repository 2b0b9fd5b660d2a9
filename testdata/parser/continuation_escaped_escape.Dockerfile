FROM busybox
RUN echo ends with an escaped backslash \\
RUN echo this is a separate instruction
RUN echo trailing spaces after the escape \   
    continue here
