#!/bin/sh
# A --git wrapper: every fetch takes 2 s longer.
if [ "$1" = "fetch" ]; then
    sleep 2
fi
exec git "$@"
