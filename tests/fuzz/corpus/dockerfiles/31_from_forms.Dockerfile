FROM scratch
FROM busybox@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
FROM localhost:5000/a/b:c AS d
FROM $UNSET
FROM busybox AS
FROM a b c d
