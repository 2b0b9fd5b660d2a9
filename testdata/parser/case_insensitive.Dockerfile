from busybox As MixedCase
run echo lower
Copy --from=x a b
WorkDir /w
