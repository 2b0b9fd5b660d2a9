FROM busybox
# Not valid JSON: docker falls back to the shell form with the text as written.
CMD [ "a", ]
CMD [foo]
ENTRYPOINT ['single', 'quotes']
RUN ["echo", "x"] trailing
CMD ["unterminated
RUN [ "valid",   "spacing"   ]
