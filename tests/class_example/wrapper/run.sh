#!/bin/sh
# Starts the real program as a child and waits for it, as `npm start` or `poetry run` do.
# It does not forward SIGTERM: only a signal to the whole process group stops the program.
"$@"
status=$?
echo "run.sh: the program exited with status $status"
exit $status
