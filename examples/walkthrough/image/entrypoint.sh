# PID 1 of the example-web container. PID 1 ignores SIGTERM unless it handles it: trap it, stop
# httpd and exit 0, so `docker stop` returns at once.
trap 'kill -TERM "$httpd" 2>/dev/null; wait "$httpd"; exit 0' TERM INT
/bin/busybox httpd -f -p "$ADDR:$PORT" -h /www &
httpd=$!
wait "$httpd"
