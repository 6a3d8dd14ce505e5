"""A webhook receiver for hookd, in FastAPI: it checks every request with ``hookd.verify``
and handles each event once.

    pip install hookd fastapi uvicorn
    HOOKD_WEBHOOK_SECRET=whsec_... python examples/receiver.py --port 3000

The secret is the webhook's ``secret`` (or the one ``hookd listen`` prints). Requests go to
``POST /hooks``; one whose signature is missing, wrong or older than 5 minutes gets ``400``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

import hookd

app = FastAPI(title="hookd receiver example")

# Delivery is at least once: the same event may come twice (webhook-id is the event's id).
_seen: collections.OrderedDict[str, None] = collections.OrderedDict()
_SEEN_MAX = 10_000


def _secret() -> str:
    secret = os.environ.get("HOOKD_WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        sys.exit("receiver: set HOOKD_WEBHOOK_SECRET to the webhook's secret (whsec_...)")
    return secret


SECRET = _secret()


@app.post("/hooks")
async def receive(request: Request) -> Response:
    body = await request.body()  # the raw bytes: the signature covers them exactly
    try:
        hookd.verify(body, request.headers, SECRET)
    except hookd.VerificationError as exc:
        print(f"refused: {exc}", flush=True)
        return Response(orjson.dumps({"error": str(exc)}), 400, media_type="application/json")
    event = orjson.loads(body)
    if event["id"] in _seen:
        return Response(status_code=204)
    _seen[event["id"]] = None
    if len(_seen) > _SEEN_MAX:
        _seen.popitem(last=False)
    # Handle it here; answer 2xx within the webhook's timeout (5 s by default).
    print(f"received {event['topic']} {event['id']}", flush=True)
    return Response(status_code=204)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
