FROM busybox AS a
FROM busybox AS A
FROM busybox AS 1bad
