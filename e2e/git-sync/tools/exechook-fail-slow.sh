#!/bin/sh
# A slow failing exechook: one-time mode must wait for it.
sleep 3
echo "fail $(date +%s.%N)" >>"$RUNLOG"
exit 1
