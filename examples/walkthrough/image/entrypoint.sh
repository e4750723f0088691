# PID 1 of the example-web container. PID 1 ignores SIGTERM unless it handles it: trap it, stop
# httpd and exit 0, so `docker stop` returns at once.
trap 'kill -TERM "$httpd" 2>/dev/null; wait "$httpd"; exit 0' TERM INT
/bin/busybox httpd -f -p "$ADDR:$PORT" -h /www &
httpd=$!
# A version built to die (the tests' 1.1.0 and 1.2.0): SIGKILL httpd this many seconds after the
# start, so the container exits non-zero.
if [ -f /www/die-after ]; then
    (/bin/busybox sleep "$(/bin/busybox cat /www/die-after)"; kill -KILL "$httpd") &
fi
wait "$httpd"
