#!/bin/sh
# Runs git in the worktree from a hook: an archive of HEAD.
exec git archive --format tar.gz --output archive.tgz HEAD
