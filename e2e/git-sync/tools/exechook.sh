#!/bin/sh
# Exechook for the e2e cases: runs in the new worktree; records what it saw.
if [ -z "${GITSYNC_HASH}" ]; then
    echo "GITSYNC_HASH is not set" >exechook
    exit 1
fi
cat file >exechook
echo "ENVKEY=$ENVKEY" >exechook-env
echo "$GITSYNC_HASH $(date +%s.%N)" >>"$RUNLOG"
