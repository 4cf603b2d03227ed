"""A faust worker for tests: upper-cases values from one topic into another.

Keys and headers pass through unchanged.

Run as ``python faust_echo_app.py worker``; configured by ECHO_* environment variables.
"""

from __future__ import annotations

import os

import faust

from streams.runtime.app import create_app
from topics.kafka import KafkaClients

app = create_app(os.environ["ECHO_APP_ID"], kafka=KafkaClients(os.environ["ECHO_BOOTSTRAP"]))
source = app.topic(os.environ["ECHO_SOURCE"], key_serializer="raw", value_serializer="raw")
target = app.topic(os.environ["ECHO_TARGET"], key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def echo(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        headers = dict(event.headers)
        headers["echoed-by"] = app.conf.id.encode()
        await target.send(key=event.key, value=event.value.upper(), headers=headers)


if __name__ == "__main__":
    app.main()
