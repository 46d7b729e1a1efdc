#!/bin/sh
# A slow succeeding exechook: one-time mode must wait for it.
sleep 3
cat file >exechook
echo "ENVKEY=$ENVKEY" >exechook-env
