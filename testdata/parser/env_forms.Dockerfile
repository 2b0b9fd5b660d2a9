FROM busybox
ENV MY_NAME="John Doe"
ENV MY_DOG=Rex\ The\ Dog MY_CAT=fluffy
ENV LEGACY_FORM this whole rest is the value
ENV A=1 B=$A C=${A:-x}
ENV PATH=/opt/bin:$PATH
ENV SINGLE='$NOT_EXPANDED' EMPTY=
