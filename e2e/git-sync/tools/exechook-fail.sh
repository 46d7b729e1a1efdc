#!/bin/sh
# A failing exechook: logs the attempt, then fails.
echo "fail $(date +%s.%N)" >>"$RUNLOG"
exit 1
