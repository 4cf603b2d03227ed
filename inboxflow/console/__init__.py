"""``inboxflow console``: a live web page of the pipeline, served by a small ASGI app.

``app`` builds the Starlette app (snapshots as server-sent events, the topic catalogue, DLQ
redrive and account pause/resume); ``static/`` holds the page, its script and its style, served
as they are (no build step, nothing from a CDN).
"""
