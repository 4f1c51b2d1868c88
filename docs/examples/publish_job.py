#!/usr/bin/python3
"""Queue a Rafty job from Python with pika (Debian: python3-pika), the way any third-party client can.

    publish_job.py AMQP_URL /absolute/path/to/Disc.iso [OUTPUT_NAME]

Publishes to the rafty.rip exchange with publisher confirms and mandatory routing, and prints the job id.
"""
import datetime
import json
import os
import sys
import uuid

import pika

url, iso = sys.argv[1], sys.argv[2]
name = sys.argv[3] if len(sys.argv) > 3 else os.path.splitext(os.path.basename(iso))[0]

job = {
    "id": str(uuid.uuid4()),
    "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "source": {"path": iso, "media": "dvd", "size": os.path.getsize(iso)},
    "encode": {"titles": "main-feature"},  # "preset" omitted: the worker's default
    "output": {"name": name},
    "origin": {"host": os.uname().nodename},
}

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()  # publish raises if the broker nacks or returns the message
channel.basic_publish(
    exchange="rafty.rip",
    routing_key="rafty.rip.iso.dvd",
    body=json.dumps(job),
    properties=pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id=job["id"],
        type="rafty.job.v1",
        app_id="publish_job.py",
        timestamp=int(datetime.datetime.now().timestamp()),
        headers={"x-rafty-attempt": 0},
    ),
    mandatory=True,
)
connection.close()
print(job["id"])
