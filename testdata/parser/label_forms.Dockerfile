FROM busybox
LABEL version=1.0
LABEL "com.example.vendor"="ACME Incorporated" com.example.label-with-value=foo
LABEL description="This text illustrates \
that label-values can span multiple lines."
LABEL multi.label1="value1" multi.label2="value2" other="value3"
LABEL legacy_key the rest is the value
LABEL empty= quoted="" 'single'='x y'
