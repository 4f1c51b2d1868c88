#!/bin/sh
# Queue a Rafty job from the shell with amqp-publish (Debian: amqp-tools).
#   publish-job.sh AMQP_URL /absolute/path/to/Disc.iso OUTPUT_NAME
# amqp-publish cannot set `type` or `message_id`; the worker accepts a job without them (the id is in
# the body). It cannot wait for a confirm either: prefer a client that can (see publish_job.py).
set -eu
url=$1 iso=$2 name=$3
id=$(cat /proc/sys/kernel/random/uuid)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
body=$(printf '{"id":"%s","created_at":"%s","source":{"path":"%s","media":"dvd"},"output":{"name":"%s"}}' \
  "$id" "$now" "$iso" "$name")
amqp-publish -u "$url" -e rafty.rip -r rafty.rip.iso.dvd -p -C application/json \
  -H "x-rafty-attempt: 0" -b "$body"
echo "$id"
